"""The script users load: `mitmdump -s addons/proxy.py` (or `mitmweb -s ...`).

Kept thin on purpose: mitmproxy hot-reloads this file and forgets its module state, so all code and
state live in the installed `anthropic_proxy` package.
"""

from anthropic_proxy.addons import all_addons

addons = all_addons()
