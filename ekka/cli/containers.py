"""`ekka containers base`: the docker executor's base image."""

from __future__ import annotations

import typer

from ekka.cli._app import console, out


def containers_base(
    mirror: str = typer.Option(
        "http://deb.debian.org/debian", help="Debian mirror for debootstrap."
    ),
    framework: str = typer.Option(
        "vllm", help="The framework whose release the image holds (vllm or sglang)."
    ),
) -> None:
    """Build (or reuse) the docker executor's base image of a framework offline and print its
    tag."""
    import time

    from ekka.containers.base import ensure_base_image, runtime_for
    from ekka.containers.engine import connect

    runtime_for(framework)  # an unknown framework: a one-line error before the engine's
    start = time.perf_counter()
    image = ensure_base_image(
        connect(),
        framework=framework,
        progress=lambda line: console.print(line, markup=False, highlight=False),
        mirror=mirror,
    )
    debian, runtime, base = image.seconds
    console.print(
        f"layers: {image.debian} {debian:.0f} s, {image.runtime} {runtime:.0f} s, "
        f"{image.base} {base:.0f} s; total {time.perf_counter() - start:.0f} s",
        highlight=False,
    )
    out.print(image.base, highlight=False)
