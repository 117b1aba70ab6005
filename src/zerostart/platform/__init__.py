"""The platform: one gateway for many models, scaling each from zero and back.

``gateway`` is the asyncio driver (routing, forwarding, starts, probes) of
``_core``, which decides admission, retries, replica lifecycle and scaling
without I/O (with ``autoscaler`` and ``liveness``, pure too); ``replica``
starts workers by cold boot, ``pool``/``slot``/``starter`` (issue 10b) keep
warm slots and pick the fastest start path, ``_probe`` is their one health
check, ``config`` reads ``platform.toml``. The contract between the gateway
and the start paths (one ``Replica`` type, the ``Starter`` protocol) is in
``_types``.
"""

from __future__ import annotations
