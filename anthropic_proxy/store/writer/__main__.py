"""`python -m anthropic_proxy.store.writer <fd>`: the store's writer process (child.py)."""

from anthropic_proxy.store.writer.child import main

main()
