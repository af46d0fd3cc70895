"""The serving half of the engine registry: per Engine, how its launch is rendered (template,
image, key variables, start-up budget, container needs) and the check of a plan's flags against
the format. The launch, systemd and Kubernetes contexts read a row instead of branching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qinfra.core.formats import Engine, FormatInfo
from qinfra.planning.flags import EngineFlags, VllmFlags
from qinfra.serving.contexts import (
    LLAMA_CPP_CUDA_IMAGE,
    LLAMA_CPP_IMAGE,
    LLAMA_SERVER_IN_IMAGE,
    VLLM_IMAGE,
)


@dataclass(frozen=True)
class EngineLaunch:
    """One engine's launch facts."""

    engine: Engine
    template: str  # the launch script's template under templates/
    script: str  # its file name on the machine
    cpu_image: str  # the container image on a machine without GPUs
    gpu_image: str
    # The variable the engine reads its API key from by itself, so the key is never in argv.
    api_key_env: str
    # The variable naming a 0600 key file instead (target local); None: the engine has none.
    api_key_file_env: str | None
    # Start-up beyond reading the weights, an estimate (see contexts.READ_MIB_PER_S).
    fixed_start_s: int
    # Workers share tensors through /dev/shm: docker --ipc=host, a memory emptyDir on Kubernetes.
    shared_memory: bool
    container_env: tuple[tuple[str, str], ...]  # fixed environment of the engine container
    # A plan's flags against the format: the problem's text, None when they load it.
    check_flags: Callable[[FormatInfo, EngineFlags], str | None]
    # Target local: what the launch script needs from this machine to find the engine (the
    # binary's variable, or PATH with the engine's venv first); raises naming the install step.
    local_env: Callable[[], dict[str, str]]
    # The executable's name of an engine qinfra started before it recorded identities (a bare
    # pid file it may still stop); None: every start of this engine was recorded.
    legacy_exe: str | None


def _no_check(info: FormatInfo, flags: EngineFlags) -> str | None:
    return None


def _llama_server_env() -> dict[str, str]:
    from qinfra.serving.llamacpp import find_binary

    return {"LLAMA_SERVER": str(find_binary("llama-server"))}


def _vllm_env() -> dict[str, str]:
    from qinfra.serving.vllm_local import vllm_path_env

    return vllm_path_env()


def _vllm_quantization(info: FormatInfo, flags: EngineFlags) -> str | None:
    """The plan's --quantization must be one the format's vLLM loaders accept."""
    assert isinstance(flags, VllmFlags), flags
    wanted = sorted(q for q in (info.vllm_quantization, info.vllm_fast_quantization) if q)
    if wanted and flags.quantization not in wanted:
        return (f"plan flag quantization={flags.quantization!r} does not load {info.format.value} "
                f"(expects one of {', '.join(wanted)}). To fix: re-plan")
    return None


LAUNCHES: dict[Engine, EngineLaunch] = {
    Engine.VLLM: EngineLaunch(
        Engine.VLLM, "vllm/serve.sh.j2", "serve.sh", cpu_image=VLLM_IMAGE, gpu_image=VLLM_IMAGE,
        api_key_env="VLLM_API_KEY",  # vllm/envs.py VLLM_API_KEY
        # vLLM has no key-file option: serve.sh reads the file this names into VLLM_API_KEY.
        api_key_file_env="QINFRA_API_KEY_FILE",
        fixed_start_s=300,  # profiling, torch.compile and CUDA-graph capture: minutes on a first start
        shared_memory=True,
        container_env=(),
        check_flags=_vllm_quantization,
        local_env=_vllm_env,
        legacy_exe=None,
    ),
    Engine.LLAMA_CPP: EngineLaunch(
        Engine.LLAMA_CPP, "llama_cpp/server.sh.j2", "server.sh", cpu_image=LLAMA_CPP_IMAGE,
        gpu_image=LLAMA_CPP_CUDA_IMAGE,
        api_key_env="LLAMA_API_KEY",  # llama-server --help: "--api-key KEY ... (env: LLAMA_API_KEY)"
        # llama-server --help: "--api-key-file FNAME ... (env: LLAMA_ARG_API_KEY_FILE)"
        api_key_file_env="LLAMA_ARG_API_KEY_FILE",
        fixed_start_s=60,  # llama.cpp maps the file
        shared_memory=False,
        container_env=(("LLAMA_SERVER", LLAMA_SERVER_IN_IMAGE),),  # where the image keeps it
        check_flags=_no_check,
        local_env=_llama_server_env,
        legacy_exe="llama-server",
    ),
}


def engine_launch(engine: Engine) -> EngineLaunch:
    return LAUNCHES[engine]


def legacy_exes() -> frozenset[str]:
    """Executable names of engines whose unrecorded pid files qinfra may still own."""
    return frozenset(row.legacy_exe for row in LAUNCHES.values() if row.legacy_exe)


__all__ = ["LAUNCHES", "EngineLaunch", "engine_launch", "legacy_exes"]
