"""Working without a network: whether the Hub can be reached, and huggingface_hub's offline mode when not.

Without a network huggingface_hub retries each request for about a minute before giving up, printing a
line per retry, when the answer cannot change. Everything that may download from the Hub (ImageNet and
VGG weights, hf-hub: generators and backbones, `pull`, `info`) asks here first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

HUB_PREFIX = "hf-hub:"  # a Hugging Face Hub repo where a path would go: hf-hub:org/name[@revision]

_reachable_cache: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub can be used now: HF_HUB_OFFLINE is not set and the endpoint (HF_ENDPOINT) accepts a
    connection (asked once per process and endpoint).

    Without a network huggingface_hub retries each request for about a minute before giving up, printing
    a line per retry; one failed connection here says the answer up front.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _reachable_cache:
        url = urlparse(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            _reachable_cache[endpoint] = True
        except OSError:
            _reachable_cache[endpoint] = False
    return _reachable_cache[endpoint]


@contextlib.contextmanager
def cache_only_when_offline() -> Iterator[None]:
    """Run a download from the Hub in huggingface_hub's offline mode when the Hub cannot be reached.

    Files already in the cache then load as usual and missing ones fail at once, instead of after a minute
    of retries that cannot succeed. huggingface_hub reads `constants.HF_HUB_OFFLINE` at each request, which
    is what HF_HUB_OFFLINE=1 sets at import; it is restored afterwards.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
