from pathlib import Path

import pytest

from anthropic_proxy.environment import Environment, parse_dotenv


def test_parse_dotenv_dialect():
    values = parse_dotenv(
        '# comment\nexport A=1\nB = "two words"\nC=\'single # not a comment\'\nD=plain # trailing comment\n'
        'E="line\\nbreak"\nnot a line\n\nF=\n'
    )
    assert values == {"A": "1", "B": "two words", "C": "single # not a comment", "D": "plain",
                      "E": "line\nbreak", "F": ""}


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("ANTHROPIC_PROXY_HOME", "OPENROUTER_API_KEY", "PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_precedence_environment_over_cwd_over_state_dir(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    state = isolated / "state"
    state.mkdir()
    (state / ".env").write_text("PORT=1111\nOPENROUTER_API_KEY=from-state\nONLY_STATE=yes\n")
    (isolated / "work" / ".env").write_text(f"ANTHROPIC_PROXY_HOME={state}\nPORT=2222\n")
    env = Environment()
    assert env.get("PORT") == "2222"
    assert env.get("OPENROUTER_API_KEY") == "from-state"
    assert env.get("ONLY_STATE") == "yes"
    monkeypatch.setenv("PORT", "3333")
    env.reload()
    assert env.get("PORT") == "3333"


def test_reload_picks_up_a_changed_file(isolated: Path):
    dotenv = isolated / "work" / ".env"
    dotenv.write_text("OPENROUTER_API_KEY=old\n")
    env = Environment()
    dotenv.write_text("OPENROUTER_API_KEY=new\n")
    assert env.get("OPENROUTER_API_KEY") == "old"
    env.reload()
    assert env.get("OPENROUTER_API_KEY") == "new"


def test_get_int_says_which_variable_is_wrong(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ValueError, match="PORT must be a whole number"):
        Environment().get_int("PORT", 8082)


def test_state_dir_option_brings_its_own_dotenv(isolated: Path):
    chosen = isolated / "chosen"
    chosen.mkdir()
    (chosen / ".env").write_text("OPENROUTER_API_KEY=from-chosen\n")
    env = Environment()
    assert env.get("OPENROUTER_API_KEY") == ""
    env.use_state_dir(chosen)
    assert env.get("OPENROUTER_API_KEY") == "from-chosen"
