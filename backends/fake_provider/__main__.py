"""``python -m backends.fake_provider --port 9001 …``: see `backends.fake_provider.cli`."""

from backends.fake_provider.cli import main

main()
