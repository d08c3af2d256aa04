"""Executors that run a probe at one commit: local worktree (default), docker, ray.

- `local.LocalExecutor`: a worktree of the commit overlaid on the installed release (`overlay`).
- `docker.DockerExecutor`: the probe (`probe`) in a container of the commit's image, which
  `images.ImageStore` obtains (reuse, pull, overlay, full build) from the base image that
  `base.ensure_base_image` builds offline; `engine.connect` is the one import of `docker`.
- `ray.RayExecutor`: each probe a task on a Ray cluster, which runs the node's local or docker
  executor there; `ray.connect` is the one import of `ray`.

Nothing is imported here: `python -m ekka.containers.overlay` runs inside images during their
build, and importing this package must stay as light as that.
"""
