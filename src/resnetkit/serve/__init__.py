"""The inference server: dynamic batching, the KServe V2 protocol, metrics, auth, rollouts.

``batcher`` knows nothing about HTTP; ``app`` maps routes onto the other modules. Import the
submodule you need; this package imports none of them.
"""
