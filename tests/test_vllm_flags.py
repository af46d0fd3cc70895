"""Every flag and value the vLLM launch renders exists in the pinned vLLM release, read from the
argument definitions inside its wheel (zipfile + ast; vLLM itself is not imported: it needs torch)."""

from __future__ import annotations

import ast
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from qinfra.core.formats import VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, VLLM_VERSION
from qinfra.core.spec import ServingSpec
from qinfra.planning.flags import VllmFlags
from qinfra.serving.render import VLLM_IMAGE, render_stack
from tests.render_helpers import ROOT, example, launch_command, plan_for, scripts, vllm_stack

WHEEL_ENV = "QINFRA_VLLM_WHEEL"
WHEEL_DIR = ROOT / ".tools" / "wheels"
DOWNLOAD = f"pip download --no-deps --only-binary=:all: vllm=={VLLM_VERSION} -d .tools/wheels"

# Where vLLM defines what `vllm serve` accepts (paths inside the wheel, 0.33.0).
ENGINE_ARGS = "vllm/engine/arg_utils.py"
FRONTEND_ARGS = "vllm/entrypoints/common/cli_args.py"
QUANTIZATION = "vllm/model_executor/layers/quantization/__init__.py"
CACHE_CONFIG = "vllm/config/cache.py"
MODEL_CONFIG = "vllm/config/model.py"
ENVS = "vllm/envs.py"

# Plan flag -> the `vllm serve` option that carries it.
PLAN_FLAGS = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "kv_cache_dtype": "--kv-cache-dtype",
    "quantization": "--quantization",
    "dtype": "--dtype",
}
# The CPU device's knobs (None/False on GPUs): variables vLLM's CPU build reads, and a bare flag.
CPU_KNOBS = {
    "cpu_kv_cache_space_gib": "VLLM_CPU_KVCACHE_SPACE",
    "cpu_threads": "VLLM_CPU_OMP_THREADS_BIND",
    "enforce_eager": "--enforce-eager",
}


@dataclass(frozen=True)
class VllmCli:
    """What the pinned release accepts, as its source defines it."""

    options: frozenset[str]
    positionals: frozenset[str]
    quantization: frozenset[str]
    deprecated_quantization: frozenset[str]
    kv_cache_dtypes: frozenset[str]
    dtypes: frozenset[str]
    env_vars: frozenset[str]
    default_gpu_memory_utilization: float


def _wheel() -> Path:
    if env := os.environ.get(WHEEL_ENV):
        return Path(env)
    found = sorted(WHEEL_DIR.glob(f"vllm-{VLLM_VERSION}-*.whl"))
    if not found:
        pytest.fail(
            f"the vLLM {VLLM_VERSION} wheel not found in {WHEEL_DIR}: run scripts/setup.sh "
            f"(or `{DOWNLOAD}`), or set {WHEEL_ENV}",
            pytrace=False,
        )
    return found[0]


def _add_argument_strings(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(options, positionals) named in every `<parser>.add_argument("...", ...)` call."""
    options: set[str] = set()
    positionals: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    (options if arg.value.startswith("-") else positionals).add(arg.value)
    return options, positionals


def _class_fields(tree: ast.Module, *names: str) -> set[str]:
    """Annotated field names of the named classes (config dataclasses)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in names:
            out |= {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return out


def _module_value(tree: ast.Module, name: str) -> ast.expr:
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            assert node.value is not None
            return node.value
    raise AssertionError(f"{name} not found")


def _field_default(tree: ast.Module, cls: str, name: str) -> object:
    """The `default=` of a config dataclass field written `name: T = Field(default=...)`."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id == name and isinstance(item.value, ast.Call)):
                    default = next(k.value for k in item.value.keywords if k.arg == "default")
                    return ast.literal_eval(default)
    raise AssertionError(f"{cls}.{name} not found")


def _strings(node: ast.expr) -> frozenset[str]:
    """The string constants of a `Literal[...]` or a list."""
    values = node.slice if isinstance(node, ast.Subscript) else node
    elts = values.elts if isinstance(values, ast.Tuple | ast.List) else [values]
    out = frozenset(e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    assert out, ast.dump(node)[:200]
    return out


@pytest.fixture(scope="module")
def vllm_cli() -> VllmCli:
    with zipfile.ZipFile(_wheel()) as wheel:

        def parse(path: str) -> ast.Module:
            return ast.parse(wheel.read(path).decode(), filename=path)

        engine, frontend = parse(ENGINE_ARGS), parse(FRONTEND_ARGS)
        frontend_source = wheel.read(FRONTEND_ARGS).decode()
        quant, cache, model, envs = (parse(p) for p in (QUANTIZATION, CACHE_CONFIG, MODEL_CONFIG, ENVS))
    engine_options, _ = _add_argument_strings(engine)
    serve_options, positionals = _add_argument_strings(frontend)
    # FrontendArgs registers each field as --field-name (add_cli_args); make sure it still does.
    assert "f\"--{key.replace('_', '-')}\"" in frontend_source
    frontend_options = {
        "--" + f.replace("_", "-") for f in _class_fields(frontend, "BaseFrontendArgs", "FrontendArgs")
    }
    env_vars = frozenset(
        key.value
        for node in ast.walk(envs)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    )
    return VllmCli(
        options=frozenset(engine_options | serve_options | frontend_options),
        positionals=frozenset(positionals),
        quantization=_strings(_module_value(quant, "QuantizationMethods")),
        deprecated_quantization=_strings(_module_value(quant, "DEPRECATED_QUANTIZATION_METHODS")),
        kv_cache_dtypes=_strings(_module_value(cache, "CacheDType")),
        dtypes=_strings(_module_value(model, "ModelDType")),
        env_vars=env_vars,
        default_gpu_memory_utilization=float(
            _field_default(cache, "CacheConfig", "gpu_memory_utilization")  # type: ignore[arg-type]
        ),
    )


def test_the_wheel_is_the_pinned_release(vllm_cli):
    assert _wheel().name.startswith(f"vllm-{VLLM_VERSION}-")
    assert f"vllm/vllm-openai:v{VLLM_VERSION}" == VLLM_IMAGE
    # The parse found vLLM's real argument set, not a handful of strings.
    assert len(vllm_cli.options) > 150
    assert {"--max-model-len", "--port", "--api-key"} <= vllm_cli.options
    assert "model_tag" in vllm_cli.positionals


def test_the_default_utilization_is_the_pinned_release_s(vllm_cli):
    """The stack schema and the ad-hoc planner share one default, and it is vLLM's own."""
    assert vllm_cli.default_gpu_memory_utilization == VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    assert ServingSpec.model_fields["gpu_memory_utilization"].default == VLLM_DEFAULT_GPU_MEMORY_UTILIZATION


def test_the_plan_names_every_memory_flag():
    """PLAN_FLAGS and CPU_KNOBS cover every field of the plan's vLLM flags, so none goes unchecked."""
    assert set(PLAN_FLAGS) | set(CPU_KNOBS) == {f.name for f in fields(VllmFlags)}


def test_the_cpu_knobs_are_vllm_s(vllm_cli):
    """Stack local-vllm's launch (vLLM's CPU build): every exported VLLM_* variable and every
    flag is one the pinned release defines, and the knobs carry the plan's values."""
    from qinfra.core.spec import load_stack
    from qinfra.planning.stack import plan_for as plan_stack_file

    spec = load_stack("local-vllm", ROOT / "stacks")
    plan = plan_stack_file(spec)
    for name, script in scripts(render_stack(spec, plan)).items():
        if not name.endswith("/serve.sh"):
            continue
        flags = plan.variant(name.split("/")[0]).chosen.engine_plan.flags
        exported = dict(w.split("=", 1) for line in script.splitlines()
                        if line.startswith("export ") for w in line.split()[1:])
        for var in exported:
            if var.startswith("VLLM_"):
                assert var in vllm_cli.env_vars, var
        assert exported[CPU_KNOBS["cpu_kv_cache_space_gib"]] == str(flags.cpu_kv_cache_space_gib)
        assert exported[CPU_KNOBS["cpu_threads"]] == f"0-{flags.cpu_threads - 1}"
        argv = launch_command(script, "vllm")
        assert CPU_KNOBS["enforce_eager"] in vllm_cli.options and argv[-3] == "--enforce-eager"
        _, options = _check(vllm_cli, [*argv[:-3], *argv[-2:]])
        assert "--gpu-memory-utilization" not in options


# (target, baseline, quantized, fleet, kv cache dtype): each case reaches other rendered values.
CASES = [
    ("aws", "bf16", "awq", ["l4"], "auto"),  # Marlin AWQ (awq_marlin), bfloat16
    ("aws", "fp16", "awq", ["t4"], "auto"),  # plain awq below compute capability 8.0
    ("aws", "fp16", "gptq", ["t4"], "auto"),  # fp16 8B needs TP 2 on T4; gptq
    ("aws", "bf16", "gptq", ["a100-80gb"], "fp8"),  # gptq_marlin, fp8 KV cache, 2 engines a GPU
    ("kubernetes", "bf16", "fp8", ["l4", "l40s"], "fp8"),  # fp8 W8A8, dtype auto
    ("aws", "bf16", "int8", ["h100-80gb"], "auto"),  # compressed-tensors
]


def _commands(files) -> list[list[str]]:
    found = [
        launch_command(text, "vllm") for name, text in scripts(files).items() if name.endswith("/serve.sh")
    ]
    assert len(found) == 2, sorted(scripts(files))
    return found


def _options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positionals and `--flag value` pairs of `vllm serve ...`."""
    assert argv[:2] == ["vllm", "serve"], argv
    rest = argv[2:]
    positionals = []
    while rest and not rest[0].startswith("-"):
        positionals.append(rest.pop(0))
    assert len(rest) % 2 == 0, rest
    pairs = dict(zip(rest[::2], rest[1::2], strict=True))
    assert len(pairs) == len(rest) // 2, f"a flag is given twice: {rest}"
    return positionals, pairs


@pytest.mark.parametrize("stack", ["prod", "k8s"])
def test_example_stacks_render_only_flags_vllm_has(vllm_cli, stack):
    spec, plan = example(stack)
    for argv in _commands(render_stack(spec, plan)):
        _check(vllm_cli, argv)


@pytest.mark.parametrize(("target", "baseline", "quantized", "gpus", "kv"), CASES)
def test_every_format_renders_flags_and_values_vllm_has(vllm_cli, target, baseline, quantized, gpus, kv):
    spec = vllm_stack(target, baseline, quantized, gpus, kv)
    plan = plan_for(spec)
    commands = _commands(render_stack(spec, plan))
    for name, argv in zip(("baseline", "quantized"), commands, strict=True):
        _, options = _check(vllm_cli, argv)
        flags = plan.variant(name).chosen.engine_plan.flags
        # The memory flags are the plan's, all of them, with the plan's values.
        for key, option in PLAN_FLAGS.items():
            value = getattr(flags, key)
            if value is None:
                assert option not in options
            else:
                assert options[option] == str(value), (name, option)


def _check(cli: VllmCli, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    positionals, options = _options(argv)
    assert len(positionals) == 1  # the model, vLLM's `model_tag`
    unknown = sorted(set(options) - cli.options)
    assert not unknown, f"flags vLLM {VLLM_VERSION} does not define: {unknown}"
    if "--quantization" in options:
        assert options["--quantization"] in cli.quantization
        assert options["--quantization"] not in cli.deprecated_quantization
    assert options["--kv-cache-dtype"] in cli.kv_cache_dtypes
    assert options["--dtype"] in cli.dtypes
    return positionals, options


def test_environment_variables_are_vllm_s(vllm_cli):
    """The API key variable (and the others the script exports) are ones vLLM reads."""
    from tests.render_helpers import with_api_key

    spec, _ = example("prod")
    spec = with_api_key(spec)
    script = next(
        t for n, t in scripts(render_stack(spec, plan_for(spec))).items() if n.endswith("/serve.sh")
    )
    exported = [
        w.split("=")[0]
        for line in script.splitlines()
        if line.startswith("export ")
        for w in line.split()[1:]
    ]
    assert "VLLM_API_KEY" in script
    for name in [*exported, "VLLM_API_KEY"]:
        if name.startswith("VLLM_"):
            assert name in vllm_cli.env_vars, name


def test_plan_shows_the_cpu_knobs_as_the_launch_script_sets_them():
    """`qinfra plan` printed the CPU device's knobs as flags vLLM does not have
    (`--cpu-threads 2 --enforce-eager True`): they are environment settings and a switch."""
    from qinfra.cli.views import flag_words
    from qinfra.core.formats import KvCacheDtype
    from qinfra.planning.flags import VllmFlags

    cpu = VllmFlags(tensor_parallel_size=1, gpu_memory_utilization=None, max_model_len=1024,
                    max_num_seqs=4, max_num_batched_tokens=2048, kv_cache_dtype=KvCacheDtype("auto"),
                    quantization=None, dtype="bfloat16", cpu_kv_cache_space_gib=1, cpu_threads=2,
                    enforce_eager=True)
    words = flag_words(cpu)
    assert words[-3:] == ["VLLM_CPU_KVCACHE_SPACE=1", "VLLM_CPU_OMP_THREADS_BIND=0-1",
                          "--enforce-eager"]
    assert not any(w.startswith(("--cpu", "--gpu-memory")) or "True" in w for w in words)
    gpu = VllmFlags(tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=8192,
                    max_num_seqs=256, max_num_batched_tokens=2048, kv_cache_dtype=KvCacheDtype("auto"),
                    quantization="awq_marlin", dtype="float16")
    assert flag_words(gpu) == ["--tensor-parallel-size 2", "--gpu-memory-utilization 0.9",
                               "--max-model-len 8192", "--max-num-seqs 256",
                               "--max-num-batched-tokens 2048", "--kv-cache-dtype auto",
                               "--quantization awq_marlin", "--dtype float16"]
