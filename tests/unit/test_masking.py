from anthropic_proxy.record.masking import mask_header_value, mask_headers, mask_secret, mask_text

ANTHROPIC_KEY = "sk-ant-api03-" + "A1b2C3d4" * 8 + "-XyZ9AA"
OPENROUTER_KEY = "sk-or-v1-" + "0123456789abcdef" * 4


def test_mask_secret_keeps_first_ten_and_last_four():
    assert mask_secret(ANTHROPIC_KEY) == ANTHROPIC_KEY[:10] + "..." + ANTHROPIC_KEY[-4:]
    assert mask_secret("short-token") == "***"


def test_headers_are_masked_by_name_and_scheme():
    headers = mask_headers([("x-api-key", ANTHROPIC_KEY), ("Authorization", f"Bearer {OPENROUTER_KEY}"),
                            ("anthropic-beta", "a,b"), ("x-custom", "1"), ("x-custom", "2")])
    assert headers["x-api-key"] == mask_secret(ANTHROPIC_KEY)
    assert headers["Authorization"] == f"Bearer {mask_secret(OPENROUTER_KEY)}"
    assert headers["anthropic-beta"] == "a,b"
    assert headers["x-custom"] == "1, 2"


def test_keys_inside_free_text_are_masked():
    text = f'{{"note": "my key is {ANTHROPIC_KEY}", "other": "{OPENROUTER_KEY}"}}'
    masked = mask_text(text)
    assert ANTHROPIC_KEY[10:-4] not in masked and OPENROUTER_KEY[10:-4] not in masked
    assert mask_secret(ANTHROPIC_KEY) in masked and mask_secret(OPENROUTER_KEY) in masked


def test_masking_is_idempotent():
    once = mask_header_value("authorization", f"Bearer {ANTHROPIC_KEY}")
    assert mask_text(once) == once
    assert mask_text(mask_text(f"Bearer {OPENROUTER_KEY}")) == mask_text(f"Bearer {OPENROUTER_KEY}")


def test_bearer_tokens_of_any_shape_are_masked_whole():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    masked = mask_text(f"Authorization: Bearer {jwt}")
    assert "eyJzdWIiOiIxMjM0NTY3ODkwIn0" not in masked
    assert masked.endswith(jwt[-4:])


def test_text_without_keys_is_unchanged():
    text = "sk-short and a bearer of news"
    assert mask_text(text) == text


def test_mask_bytes_masks_keys_in_bytes_and_keeps_other_bytes():
    from anthropic_proxy.record.masking import mask_bytes

    key = "sk-ant-api03-" + "a" * 40 + "end9"
    data = b"\xff\xfe not utf-8, then " + f"Bearer {key} and {key}".encode()
    masked = mask_bytes(data)
    assert key.encode() not in masked and masked.startswith(b"\xff\xfe not utf-8")
    assert masked.count(b"sk-ant-api...end9") == 2
    assert mask_bytes(b"no key here") == b"no key here"
