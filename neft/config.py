"""The configuration: one typed schema for params.yaml, checked once when it loads.

DVC's Hydra integration writes params.yaml from conf/ on `dvc exp run`; `compose_params` does the
same composition in-process (tests use it to check params.yaml has not drifted from conf/).
`parse_config` turns the composed dict into a frozen `Config`: unknown keys, missing keys, wrong
types and out-of-range values are all reported together in one `ConfigError`, each naming the key,
the value and what is allowed. Every stage then reads its typed slice (`config.train.steps`).

A leaf: it imports no other domain module and no torch, and has no side effects, so reading the
config is cheap. The choices it checks are named here; the modules that implement them (neft.masks,
neft.models, neft.neurons, sacreBLEU) are checked to agree by tests/test_config.py. Device,
determinism and the plotting backend are set up by neft.runtime.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from neft.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = Path("params.yaml")
CONFIG_DIR = PROJECT_ROOT / "conf"
TASK_SOURCES = ("sword", "aclsum", "jsonl", "hub_translation", "gettext")
TASK_KINDS = ("translation", "summarization")
PROBE_KINDS = ("full", "matrices", "lora", "gradient")  # neft.methods.PROBE_SETUPS maps each to a set-up
# The names the domain modules implement (tests/test_config.py checks each against its module):
STRATEGIES = ("cosine", "reversed", "random")  # neft.masks.STRATEGIES
DTYPES = ("float32", "bfloat16", "float16")  # neft.models.DTYPES
MODEL_SOURCES = ("gguf_wheel", "hub", "random_init")  # neft.models.SOURCES
NEURON_KINDS = ("in", "out", "gate")  # neft.neurons.NEURON_KINDS
SCORE_FORMS = ("stable", "fp32")  # neft.neurons.SCORE_FORMS
# sacreBLEU's tokenizers (sacrebleu.metrics.bleu._TOKENIZERS); ja-mecab and ko-mecab need extra packages.
BLEU_TOKENIZERS = ("none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab", "spm", "flores101", "flores200", "spBLEU-1K")


def _check(predicate: typing.Callable[[Any], bool], allowed: str) -> dict[str, Any]:
    """Field metadata: a range check on a value that already has the right type."""
    return {"check": predicate, "allowed": allowed}


POSITIVE = _check(lambda v: v > 0 and math.isfinite(v), "a number > 0")
AT_LEAST_ONE = _check(lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE = _check(lambda v: v >= 0, "a value >= 0")
FRACTION = _check(lambda v: 0 < v < 1, "a number in (0, 1)")


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPUs: torch's deterministic algorithms (slower); CPU runs are deterministic without it.
    deterministic: bool = False
    # auto: bf16 where the device has native bf16, else the model's dtype; a dtype name; null: the model's.
    autocast: str | None = field(default="auto", metadata=_check(lambda v: v is None or v == "auto" or v in DTYPES,
                                                                   f"auto, null or one of {list(DTYPES)}"))
    # Training processes on this machine (torchrun; neft.distributed), and how they split the work:
    # ddp (each holds the model, DDP reduces the trainable parameters) or fsdp (FSDP2 shards every weight).
    processes: int = field(default=1, metadata=AT_LEAST_ONE)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Several machines: `nodes` of them, each running `processes`; this one is `node_rank` (0 writes the
    # results), and all meet at node 0's `rendezvous` address, host:port (torchrun's static rendezvous).
    nodes: int = field(default=1, metadata=AT_LEAST_ONE)
    node_rank: int = field(default=0, metadata=NON_NEGATIVE)
    rendezvous: str | None = None

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes

    def problems(self) -> list[str]:
        found = []
        if self.node_rank >= self.nodes:
            found.append(f"runtime.node_rank = {self.node_rank}: must be below runtime.nodes ({self.nodes})")
        if self.nodes > 1 and not self.rendezvous:
            found.append(f"runtime.rendezvous is missing: runtime.nodes = {self.nodes} needs node 0's host:port, "
                         "e.g. runtime.rendezvous=10.0.0.1:29500")
        return found


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = field(metadata=AT_LEAST_ONE)
    learning_rate: float = field(metadata=POSITIVE)
    # full: the paper's full fine-tune; matrices: only the candidate matrices (mask.kinds) train;
    # lora: LoRA of lora_rank on those matrices, merged before scoring; gradient: no training, the
    # summed gradient of `steps` batches on those matrices, scored as one SGD step of learning_rate.
    kind: str = field(default="full", metadata=_check(lambda v: v in PROBE_KINDS, f"one of {list(PROBE_KINDS)}"))
    lora_rank: int = field(default=64, metadata=AT_LEAST_ONE)


@dataclass(frozen=True)
class ScoreConfig:
    form: str = field(default="stable", metadata=_check(lambda v: v in SCORE_FORMS, f"one of {list(SCORE_FORMS)}"))


@dataclass(frozen=True)
class MaskConfig:
    strategy: str = field(default="cosine", metadata=_check(lambda v: v in STRATEGIES, f"one of {list(STRATEGIES)}"))
    kinds: tuple[str, ...] = field(default=("in", "out"), metadata=_check(
        lambda v: bool(v) and set(v) <= set(NEURON_KINDS) and len(set(v)) == len(v),
        f"a non-empty list of distinct kinds from {list(NEURON_KINDS)}"))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = field(metadata=AT_LEAST_ONE)
    batch_size: int = field(metadata=AT_LEAST_ONE)
    eval_every: int = field(default=0, metadata=NON_NEGATIVE)  # 0: validate only at the end
    weight_decay: float = field(default=0.0, metadata=NON_NEGATIVE)
    warmup_steps: int = field(default=0, metadata=NON_NEGATIVE)
    max_grad_norm: float | None = field(default=1.0, metadata=_check(lambda v: v is None or v > 0, "a number > 0 or null"))
    gradient_checkpointing: bool = False
    # Gradient accumulation: each process's share of a batch goes through this many forward/backward
    # passes (per-device batch = batch_size / (processes x nodes x this)); the update is the same.
    gradient_accumulation: int = field(default=1, metadata=AT_LEAST_ONE)
    # Save the training state every this many steps, so a killed stage resumes there (0: never).
    checkpoint_every: int = field(default=50, metadata=NON_NEGATIVE)

    def problems(self) -> list[str]:
        if self.warmup_steps >= self.steps:
            return [f"train.warmup_steps = {self.warmup_steps}: must be below train.steps ({self.steps})"]
        return []


@dataclass(frozen=True)
class MethodConfig:
    # The rates this method trains at (one training run each); the lowest validation loss chooses
    # among them (neft.selection), and only the chosen run is evaluated on the test split.
    learning_rates: tuple[float, ...] = field(metadata=_check(
        lambda v: bool(v) and all(r > 0 and math.isfinite(r) for r in v) and len(set(v)) == len(v),
        "a non-empty list of distinct numbers > 0"))


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA's settings besides its rates; its rank is the one that matches NeFT's budget (neft.methods)."""

    alpha: float = field(default=16.0, metadata=POSITIVE)
    dropout: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))


@dataclass(frozen=True)
class LoraMethodConfig(MethodConfig, LoraSettings):
    """methods.lora: its rates and its settings."""


@dataclass(frozen=True)
class MethodsConfig:
    full: MethodConfig
    neft: MethodConfig
    lora: LoraMethodConfig


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = field(metadata=AT_LEAST_ONE)


@dataclass(frozen=True)
class AnalysisConfig:
    strongly_affected_fraction: float = field(metadata=FRACTION)
    compare_ratios: tuple[float, ...] = field(metadata=_check(lambda v: all(0 < r < 1 for r in v), "ratios in (0, 1)"))
    examples: int = field(metadata=AT_LEAST_ONE)


@dataclass(frozen=True)
class WheelFile:
    distribution: str
    file: str | None = None  # the GGUF file's path inside the installed distribution, or
    assemble: str | None = None  # a module whose assemble(path) joins the GGUF from part wheels

    def problems(self) -> list[str]:
        if (self.file is None) == (self.assemble is None):
            return [f"model.wheel needs exactly one of file and assemble, got file = {self.file!r}, assemble = {self.assemble!r}"]
        return []


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: str = field(metadata=_check(lambda v: v in MODEL_SOURCES, f"one of {list(MODEL_SOURCES)}"))
    dtype: str = field(default="float32", metadata=_check(lambda v: v in DTYPES, f"one of {list(DTYPES)}"))
    wheel: WheelFile | None = None  # gguf_wheel: the installed distribution and the file inside it
    repo: str | None = None  # hub
    revision: str | None = None  # hub
    architecture: dict[str, Any] | None = None  # random_init: LlamaConfig fields

    def problems(self) -> list[str]:
        needs = {"gguf_wheel": "wheel", "hub": "repo", "random_init": "architecture"}.get(self.source)
        if needs and getattr(self, needs) is None:
            return [f"model.{needs} is missing: model.source = {self.source!r} needs it"]
        if self.source == "random_init":
            return architecture_problems(self.architecture)
        return []


# model.architecture's sizes (transformers' config fields), checked before a model is built from them.
ARCHITECTURE_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "max_position_embeddings")


def architecture_problems(architecture: dict[str, Any]) -> list[str]:
    """What is wrong with a random_init model.architecture, each naming the field and the fix."""
    key = "model.architecture"
    found = [f"{key}.{name} = {architecture[name]!r}: must be an integer >= 1" for name in ARCHITECTURE_SIZES
             if name in architecture and not (isinstance(architecture[name], int) and not isinstance(architecture[name], bool)
                                              and architecture[name] >= 1)]
    if found:
        return found
    missing = [name for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
               if name not in architecture]
    if missing:
        return [f"{', '.join(f'{key}.{name}' for name in missing)} missing: a random_init model needs them"]
    hidden, heads = architecture["hidden_size"], architecture["num_attention_heads"]
    kv_heads = architecture.get("num_key_value_heads", heads)
    if "head_dim" not in architecture and hidden % heads:
        lower, upper = hidden // heads * heads, -(-hidden // heads) * heads
        found.append(f"{key}.hidden_size = {hidden}: must be a multiple of {key}.num_attention_heads ({heads}), "
                     f"e.g. {upper if lower == 0 else f'{lower} or {upper}'}; or set {key}.head_dim")
    if heads % kv_heads:
        found.append(f"{key}.num_attention_heads = {heads}: must be a multiple of {key}.num_key_value_heads ({kv_heads})")
    return found


@dataclass(frozen=True)
class SplitSizes:
    """How many examples each split keeps (a seeded sample); null keeps all."""

    train: int | None = field(metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1 or null"))
    valid: int | None = field(metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1 or null"))
    test: int | None = field(metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1 or null"))


@dataclass(frozen=True)
class MetricOptions:
    bleu_tokenize: str = field(default="13a", metadata=_check(  # sacreBLEU's tokenizer: 13a, zh, ...
        lambda v: v in BLEU_TOKENIZERS, f"one of sacreBLEU's tokenizers {list(BLEU_TOKENIZERS)}"))
    rouge: bool = False  # translation: also ROUGE (CJK scored per character)


@dataclass(frozen=True)
class TaskConfig:
    name: str
    kind: str = field(metadata=_check(lambda v: v in TASK_KINDS, f"one of {list(TASK_KINDS)}"))
    source: str = field(metadata=_check(lambda v: v in TASK_SOURCES, f"one of {list(TASK_SOURCES)}"))
    instruction: str
    max_examples: SplitSizes
    max_length: int = field(metadata=AT_LEAST_ONE)  # tokens per training example, prompt included
    max_new_tokens: int = field(metadata=AT_LEAST_ONE)
    metric_options: MetricOptions = MetricOptions()
    # sword (the Bible): two modules, held-out books
    source_module: str | None = None
    target_module: str | None = None
    valid_books: tuple[str, ...] | None = None
    test_books: tuple[str, ...] | None = None
    # aclsum
    aspects: tuple[str, ...] | None = None
    # jsonl (your own files)
    files: dict[str, str] | None = None
    source_field: str | None = None
    target_field: str | None = None
    # gettext (software messages): Debian package -> its catalogs (gettext domains); held-out packages
    language: str | None = None  # the catalogs' locale, e.g. zh_CN
    locale_dir: str = "/usr/share/locale"
    packages: dict[str, tuple[str, ...]] | None = None
    valid_packages: tuple[str, ...] | None = None
    test_packages: tuple[str, ...] | None = None
    min_words: int = field(default=6, metadata=AT_LEAST_ONE)
    # hub_translation
    source_lang: str | None = None
    target_lang: str | None = None
    train_set: dict[str, Any] | None = None
    test_set: dict[str, Any] | None = None

    NEEDS: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "sword": ("source_module", "target_module", "valid_books", "test_books"),
        "aclsum": ("aspects",),
        "jsonl": ("files", "source_field", "target_field"),
        "hub_translation": ("source_lang", "target_lang", "train_set", "test_set"),
        "gettext": ("language", "packages", "valid_packages", "test_packages"),
    }

    def problems(self) -> list[str]:
        missing = [key for key in self.NEEDS.get(self.source, ()) if getattr(self, key) is None]
        found = []
        if missing:
            found.append(f"task.{', task.'.join(missing)} missing: task.source = {self.source!r} needs them")
        if self.source == "jsonl" and self.files is not None and sorted(self.files) != ["test", "train", "valid"]:
            found.append(f"task.files = {self.files!r}: needs exactly train, valid and test")
        if self.source == "gettext" and None not in (self.packages, self.valid_packages, self.test_packages):
            unknown = sorted((set(self.valid_packages) | set(self.test_packages)) - set(self.packages))
            if unknown:
                found.append(f"task.valid_packages / task.test_packages name {unknown}: add them to task.packages")
            shared = sorted(set(self.valid_packages) & set(self.test_packages))
            if shared:
                found.append(f"task.valid_packages and task.test_packages share {shared}: a package belongs to one split")
        return found


@dataclass(frozen=True)
class Config:
    """params.yaml, typed. conf/config.yaml documents every key."""

    seed: int = field(metadata=NON_NEGATIVE)
    ratio: float = field(metadata=_check(lambda v: 0 < v < 1, "a number in (0, 1): the fraction of all parameters NeFT trains"))
    runtime: RuntimeConfig
    probe: ProbeConfig
    score: ScoreConfig
    mask: MaskConfig
    train: TrainConfig
    methods: MethodsConfig
    evaluate: EvaluateConfig
    analysis: AnalysisConfig
    model: ModelConfig
    task: TaskConfig

    def problems(self) -> list[str]:
        found = []
        if self.train.batch_size % (self.runtime.world_size * self.train.gradient_accumulation):
            found.append(f"train.batch_size = {self.train.batch_size}: must be a multiple of runtime.processes "
                         f"({self.runtime.processes}) x runtime.nodes ({self.runtime.nodes}) x train.gradient_accumulation "
                         f"({self.train.gradient_accumulation}), each pass of each process takes an equal share of every batch")
        if self.probe.kind == "gradient" and self.runtime.strategy == "fsdp" and self.runtime.world_size > 1:
            found.append("probe.kind = 'gradient' with runtime.strategy = 'fsdp': the gradient probe saves the gradients it "
                         "collected, which FSDP shards; use runtime.strategy=ddp")
        return found


# --- parsing: every problem at once -----------------------------------------------------------


def _type_name(annotation: Any) -> str:
    if annotation in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[annotation]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(annotation)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or annotation is dict:
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return f"a section with keys {[f.name for f in dataclasses.fields(annotation)]}"
    return str(annotation)


class _Invalid(Exception):
    pass


Section = typing.TypeVar("Section")


def _convert(annotation: Any, value: Any, key: str, problems: list[str]) -> Any:
    """`value` as `annotation`, or _Invalid after noting what is wrong in `problems`."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _parse_section(annotation, value, key, problems)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        if len(options) == 1:  # X | None: X's own message says what is wrong
            return _convert(options[0], value, key, problems)
        for option in options:
            try:
                return _convert(option, value, key, [])
            except _Invalid:
                continue
        problems.append(f"{key} = {value!r}: must be {_type_name(annotation)}")
        raise _Invalid
    if origin is Literal:
        if value in typing.get_args(annotation):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            item_type = typing.get_args(annotation)[0]
            return tuple(_convert(item_type, item, f"{key}[{i}]", problems) for i, item in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            value_type = typing.get_args(annotation)[1]
            return {name: _convert(value_type, item, f"{key}.{name}", problems) for name, item in value.items()}
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Any:
        return value
    problems.append(f"{key} = {value!r}: must be {_type_name(annotation)}")
    raise _Invalid


def _parse_section(cls: type, data: Any, key: str, problems: list[str]) -> Any:
    prefix = f"{key}." if key else ""
    if not isinstance(data, dict):
        problems.append(f"{key or 'params'} = {data!r}: must be {_type_name(cls)}")
        raise _Invalid
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    for name in unknown:
        problems.append(f"{prefix}{name}: unknown key; {key or 'the top level'} has {sorted(fields)}")
    values, complete = {}, not unknown
    for name, spec in fields.items():
        path = prefix + name
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                problems.append(f"{path}: missing; must be {_type_name(hints[name])}")
                complete = False
            continue
        try:
            value = _convert(hints[name], data[name], path, problems)
        except _Invalid:
            complete = False
            continue
        check = spec.metadata.get("check")
        if check is not None and not check(value):
            problems.append(f"{path} = {data[name]!r}: must be {spec.metadata['allowed']}")
            complete = False
            continue
        values[name] = value
    if not complete:
        raise _Invalid
    section = cls(**values)
    extra = section.problems() if hasattr(section, "problems") else []
    if extra:
        problems.extend(extra)
        raise _Invalid
    return section


def parse_section(cls: type[Section], data: Any, key: str = "", source: str = "params.yaml") -> Section:
    """`data` as the typed section `cls` (named `key` in params.yaml), or one ConfigError that lists
    every problem in it."""
    problems: list[str] = []
    try:
        return _parse_section(cls, data, key, problems)
    except _Invalid:
        raise ConfigError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems)) from None


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """A typed Config, or one ConfigError that lists every problem in `data`."""
    return parse_section(Config, data, "", source)


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2's numbers: `1e-3` is a float (PyYAML's YAML 1.1 reads it as a string), as DVC and
    Hydra read it."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(path: Path) -> Any:
    """A YAML file's data, its numbers read as YAML 1.2 reads them; a syntax error is one ConfigError
    that names the file, the line and the column."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_Yaml12Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = " ".join(str(error.problem or error.context or "invalid YAML").split())
        start = error.context_mark
        if error.problem and error.context and start and (start.line, start.column) != (mark.line, mark.column):
            problem += f" ({' '.join(error.context.split())} from line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"{path}: not valid YAML at {where}: {problem}; fix it there, "
                          "or recompose it with `dvc exp run` or scripts/compose_params.py") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None


def load_config(path: Path = PARAMS_FILE) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root (or `dvc exp run` to compose it from conf/)")
    return parse_config(read_yaml(path), str(path))


def compose_params(overrides: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """Compose conf/ with Hydra exactly as `dvc exp run -S ...` does, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            config = compose(config_name="config", overrides=overrides or [])
    except HydraException as error:
        raise ConfigError(str(error)) from None
    return OmegaConf.to_container(config, resolve=True)


def compose_config(overrides: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> Config:
    return parse_config(compose_params(overrides, config_dir), f"conf/ with {overrides or []}")
