"""The executors' defaults, in one place: the executor spec (`spec.ExecutorSpec`, read from the
CLI's options and from `[executor]`) and the containers' own records (`images.ImageSettings`,
`docker.ContainerLimits`, `ray.RaySettings`) take theirs from here. A leaf: it imports nothing."""

from __future__ import annotations

IMAGE_TAG = "ekka/{framework}:{sha}"  # the per-commit image's tag template
SHM_SIZE = "2g"  # a probe container's shared memory
PIDS_LIMIT = 4096  # a probe container's process limit
TIMEOUT: float = 600  # seconds per probe, then it skips
RAY_CPUS = 1.0  # CPUs a probe's task asks for
RAY_GPUS = 0.0  # GPUs a probe's task asks for
QUEUE_TIMEOUT = 1800.0  # seconds a task may wait for a node with its resources
NODE_EXECUTOR = "local"  # what runs a probe on its node
