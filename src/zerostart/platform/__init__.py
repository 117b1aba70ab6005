"""The platform: one gateway for many models, scaling each from zero and back.

``gateway`` routes and queues, ``autoscaler`` decides (pure logic, no I/O),
``replica`` starts workers by cold boot, ``pool``/``slot``/``starter`` (issue
10b) keep warm slots and pick the fastest start path, ``config`` reads
``platform.toml``. The contract between the gateway and the start paths is in
``_types``.
"""

from __future__ import annotations
