"""The seed doc's code examples (HF's docs of these classes) run as written on our classes.

The examples are read from ``../shared/reference/xlm-roberta-xl-docs.md`` (relative to the
repository root; skipped when absent): every fenced block, its ``>>>`` / ``...`` lines parsed by
``doctest``. Each one runs with only these substitutions, made on its syntax tree:

- ``from transformers import ...`` binds our classes from `modeling` (``AutoTokenizer`` ->
  `modeling.XLMRobertaTokenizer`; ``Roberta*`` names, used by the causal-LM example, -> our
  ``XLMRobertaXL*`` classes);
- the hub name given to ``from_pretrained`` (``xlm-roberta-xlarge``, ``roberta-base``, ...) -> a
  tiny local checkpoint directory written by our ``save_pretrained``, with the real
  SentencePiece model (and HF's ``tokenizer.json``) from ``../shared/data/tokenizer`` beside it
  and the real vocabulary size (250,880).

The same example then runs with HF transformers' classes (``AutoTokenizer`` itself; ``Roberta*``
-> HF's ``XLMRobertaXL*``) on the same directory, and every variable it leaves behind is compared
with ours: tensors within 1e-5, ids and labels equal, outputs field by field, models weight by
weight, configs field by field. The doc shows no outputs for the real model (with tiny random
weights they would differ anyway); each example's results are checked for shape and type
instead (`EXPECTED`). An example that loads nothing (the config example builds the default,
full-size XL: 3.5 B parameters) builds its model on the meta device.

Two checkpoints per example: one holding every weight of the class the example loads (the
comparison with HF covers the heads too), and a masked-LM checkpoint like the released one,
on which heads are initialised when loaded (there only names, shapes and types are compared).
"""

from __future__ import annotations

import ast
import doctest
import json
import re
import shutil
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

import modeling

from ..conftest import REPO_ROOT, SHARED_REASON, SPM_MODEL, TOKENIZER_JSON

transformers = pytest.importorskip("transformers")

DOC = REPO_ROOT.parent / "shared" / "reference" / "xlm-roberta-xl-docs.md"
DOC_REASON = f"{DOC.relative_to(REPO_ROOT.parent)} (HF's docs of these classes) is not beside the repository"
#: Hub names the examples load; each is replaced by the example's local checkpoint directory.
HUB_NAMES = {"xlm-roberta-xlarge", "facebook/xlm-roberta-xl", "facebook/xlm-roberta-xxl", "roberta-base"}
TINY = {"vocab_size": 250880, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}
ATOL = 1e-5


# ------------------------------------------------------------------------------ the doc's examples
@dataclass
class DocExample:
    """One fenced code block of the doc: its section (``## XLMRobertaXLForMaskedLM``), the text
    line that introduces it (``Example of multi-label classification:``) and doctest's examples."""

    section: str
    label: str
    steps: list[doctest.Example] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.section}: {self.label}"

    @property
    def source(self) -> str:
        return "".join(step.source for step in self.steps)


def read_examples(text: str) -> list[DocExample]:
    """Every fenced block with ``>>>`` lines, in the order of the doc."""
    examples, section, label = [], "", ""
    parser = doctest.DocTestParser()
    for match in re.finditer(r"^## ([^\n]+)$|^```[^\n]*\n(.*?)^```|^(\S[^\n]*)$", text, flags=re.MULTILINE | re.DOTALL):
        heading, block, line = match.groups()
        if heading is not None:
            section, label = heading.strip(), ""
        elif block is not None:
            steps = parser.get_examples(block)
            if steps:
                examples.append(DocExample(section, label.rstrip(":"), steps))
        else:
            label = line.strip()
    return examples


EXAMPLES = read_examples(DOC.read_text(encoding="utf8")) if DOC.is_file() else []


def _params() -> list[Any]:
    if not EXAMPLES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=DOC_REASON))]
    return [pytest.param(example, id=f"{example.section}-{i}") for i, example in enumerate(EXAMPLES)]


# ------------------------------------------------------------------------------ substitutions
class _Substitute(ast.NodeTransformer):
    """``from transformers import A`` -> ``A = __doc_import__("A")``; the hub name of every
    ``*.from_pretrained("name", ...)`` -> ``checkpoint``. Anything else it cannot map fails."""

    def __init__(self, checkpoint: Path | None) -> None:
        self.checkpoint = checkpoint

    def visit_Import(self, node: ast.Import) -> ast.AST:
        if any(alias.name.split(".")[0] == "transformers" for alias in node.names):
            raise AssertionError("the example imports the transformers module itself: no substitution for it")
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if node.module is None or node.module.split(".")[0] != "transformers":
            return node
        return [ast.copy_location(ast.Assign(
            targets=[ast.Name(alias.asname or alias.name, ast.Store())],
            value=ast.Call(ast.Name("__doc_import__", ast.Load()), [ast.Constant(alias.name)], []),
        ), node) for alias in node.names]

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained" and node.args:
            name = node.args[0]
            if not (isinstance(name, ast.Constant) and name.value in HUB_NAMES):
                raise AssertionError(f"from_pretrained({ast.unparse(name)}): not a hub name this test maps")
            assert self.checkpoint is not None
            node.args[0] = ast.copy_location(ast.Constant(str(self.checkpoint)), name)
        return node


def loads_checkpoint(example: DocExample) -> bool:
    return any(isinstance(node, ast.Constant) and node.value in HUB_NAMES
               for node in ast.walk(ast.parse(example.source)))


def imported_names(example: DocExample) -> list[str]:
    return [alias.name for node in ast.walk(ast.parse(example.source))
            if isinstance(node, ast.ImportFrom) and node.module == "transformers" for alias in node.names]


def xl_name(name: str) -> str:
    """HF's ``Roberta*`` names (the causal-LM example's) as the XL class of the same task."""
    return "XLMRobertaXL" + name[len("Roberta"):] if name.startswith("Roberta") else name


def our_class(name: str) -> Any:
    return modeling.XLMRobertaTokenizer if name == "AutoTokenizer" else getattr(modeling, xl_name(name))


def hf_class(name: str) -> Any:
    return getattr(transformers, name if name == "AutoTokenizer" else xl_name(name))


@dataclass
class Run:
    """What running an example left behind: its variables, the values it displayed and, per
    step that raised, ``(step index, exception type, first line of its message)``."""

    variables: dict[str, Any]
    displayed: list[tuple[str, Any]]
    errors: list[tuple[int, str, str]]


def run_example(example: DocExample, resolve: Callable[[str], Any], checkpoint: Path | None) -> Run:
    """Run ``example`` step by step, as doctest does (a step that raises is recorded and the
    next one runs), with the substitutions above.

    Without a checkpoint the example builds its models on the meta device."""
    namespace: dict[str, Any] = {"__doc_import__": resolve, "__name__": "doc_example"}
    displayed: list[tuple[str, Any]] = []
    errors: list[tuple[int, str, str]] = []
    substitute = _Substitute(checkpoint)
    with torch.device("meta") if checkpoint is None else torch.device("cpu"):
        for index, step in enumerate(example.steps):
            tree = ast.fix_missing_locations(substitute.visit(ast.parse(step.source)))
            try:
                value = _run_step(tree, namespace, example.name)
            except Exception as error:  # noqa: BLE001 (doctest reports it and goes on)
                errors.append((index, type(error).__name__, str(error).splitlines()[0] if str(error) else ""))
                continue
            if value is not None:
                displayed.append((step.want, value))
    return Run({key: value for key, value in namespace.items() if _is_result(key, value)}, displayed, errors)


def _run_step(tree: ast.Module, namespace: dict[str, Any], name: str) -> Any:
    """Execute one doctest step; the value of a final bare expression (what doctest shows)."""
    *body, last = tree.body or [ast.Pass()]
    exec(compile(ast.Module(body, []), name, "exec"), namespace)  # noqa: S102 (the doc's own code)
    if isinstance(last, ast.Expr):
        return eval(compile(ast.Expression(last.value), name, "eval"), namespace)
    exec(compile(ast.Module([last], []), name, "exec"), namespace)  # noqa: S102 (the doc's own code)
    return None


def _is_result(name: str, value: Any) -> bool:
    """A variable the example computed: not an imported module, class or the tokenizer."""
    if name.startswith("__") or isinstance(value, (type, types.ModuleType)):
        return False
    return isinstance(value, nn.Module) or not callable(value)


# ------------------------------------------------------------------------------ checkpoints
def _write_checkpoint(directory: Path, cls: Any) -> Path:
    """A tiny ``cls`` with seeded, perturbed weights, saved by our ``save_pretrained``, with the
    real tokenizer files beside it (as in the released repositories)."""
    model = cls(modeling.XLMRobertaXLConfig(**TINY))
    model.init_weights(seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():  # biases and LayerNorms not trivially 0 / 1
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(directory)
    shutil.copy(SPM_MODEL, directory / SPM_MODEL.name)
    shutil.copy(TOKENIZER_JSON, directory / TOKENIZER_JSON.name)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Model class name -> its checkpoint directory (written once per module)."""
    if not SPM_MODEL.is_file() or not TOKENIZER_JSON.is_file():
        pytest.skip(SHARED_REASON)
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = _write_checkpoint(tmp_path_factory.mktemp(name), our_class(name))
        return made[name]

    return get


def model_class_name(example: DocExample) -> str:
    """The model class an example loads (the one imported name that is no config or tokenizer)."""
    names = [n for n in imported_names(example) if not n.endswith(("Config", "Tokenizer"))]
    assert len(names) == 1, f"{example.name}: which model does it load? {names}"
    return xl_name(names[0])


# ------------------------------------------------------------------------------ comparison
def compare(ours: Any, theirs: Any, what: str, *, values: bool = True) -> None:
    """``ours`` is what HF's run gave: same kind, keys, dtypes, shapes and numbers (floats within
    `ATOL`); without ``values`` only kind, keys, dtypes and ranks (a shape may depend on values,
    e.g. the classes over a threshold)."""
    if isinstance(theirs, Tensor):
        assert isinstance(ours, Tensor), f"{what}: {type(ours).__name__}, HF a tensor"
        same_shape = ours.shape == theirs.shape if values else ours.dim() == theirs.dim()
        assert same_shape and ours.dtype == theirs.dtype, (
            f"{what}: {ours.dtype}{tuple(ours.shape)} vs HF {theirs.dtype}{tuple(theirs.shape)}")
        if values and not theirs.is_meta:
            diff = (ours.detach().double() - theirs.detach().double()).abs().max().item() if ours.numel() else 0.0
            assert diff <= (ATOL if ours.is_floating_point() else 0), f"{what}: max-abs-diff {diff:.3g}"
    elif isinstance(theirs, nn.Module):
        mine, reference = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == reference.keys(), f"{what}: weights {sorted(mine.keys() ^ reference.keys())} differ"
        for key in sorted(reference):
            compare(mine[key], reference[key], f"{what}.{key}", values=values)
        compare(ours.config, theirs.config, f"{what}.config")
    elif isinstance(theirs, transformers.PretrainedConfig):
        # as config.json has them: our to_dict() gives id2label string keys, HF's int keys
        theirs_dict, ours_dict = json.loads(theirs.to_json_string(False)), json.loads(ours.to_json_string(False))
        for key in ours_dict.keys() & theirs_dict.keys() - {"architectures", "transformers_version"}:
            assert ours_dict[key] == theirs_dict[key], f"{what}.{key}: {ours_dict[key]!r} vs HF {theirs_dict[key]!r}"
        assert ours.num_labels == theirs.num_labels and ours.id2label == theirs.id2label, what
    elif hasattr(theirs, "keys"):  # outputs, BatchEncoding, state dicts
        assert list(ours.keys()) == list(theirs.keys()), f"{what}: keys {list(ours.keys())} vs HF {list(theirs.keys())}"
        for key in theirs:
            compare(ours[key], theirs[key], f"{what}[{key!r}]", values=values)
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and (not values or len(ours) == len(theirs)), f"{what}: {ours!r} vs HF {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            compare(a, b, f"{what}[{i}]", values=values)
    elif isinstance(theirs, float):
        assert isinstance(ours, float) and (not values or abs(ours - theirs) <= ATOL), f"{what}: {ours} vs HF {theirs}"
    else:
        assert type(ours) is type(theirs), f"{what}: {type(ours).__name__} vs HF {type(theirs).__name__}"
        assert not values or ours == theirs, f"{what}: {ours!r} vs HF {theirs!r}"


def compare_runs(ours: Run, theirs: Run, *, values: bool) -> None:
    """Every variable HF's run left behind (but the tokenizer) equals ours, and what it displays."""
    assert ours.errors == theirs.errors, f"steps that raised: {ours.errors} vs HF {theirs.errors}"
    assert ours.variables.keys() == theirs.variables.keys()
    for name in sorted(theirs.variables):
        compare(ours.variables[name], theirs.variables[name], name, values=values)
    assert len(ours.displayed) == len(theirs.displayed)
    for (want, got), (_, reference) in zip(ours.displayed, theirs.displayed):
        compare(got, reference, f"the value shown as {want.strip()!r}", values=values)
        shown = _literal(want)
        assert shown is None or isinstance(got, type(shown)), f"the doc shows {want.strip()!r}, we give {got!r}"


def _literal(want: str) -> Any:
    try:
        return ast.literal_eval(want.strip())
    except (ValueError, SyntaxError):
        return None


# ------------------------------------------------------------------------------ expectations
def _loss(value: Any) -> None:
    assert isinstance(value, Tensor) and value.shape == () and value.dtype == torch.float32
    assert torch.isfinite(value) and value.requires_grad


def _default_config(v: dict[str, Any]) -> None:
    config = v["configuration"]
    sizes = (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
             config.intermediate_size, config.max_position_embeddings)
    assert sizes == (250880, 2560, 36, 32, 10240, 514)  # the doc's signature: the XL defaults
    assert v["model"].config is config
    assert all(p.is_meta for p in v["model"].parameters()) and v["model"].num_parameters() > 3_400_000_000


def _backbone(v: dict[str, Any]) -> None:
    n = v["inputs"]["input_ids"].shape[1]
    assert v["last_hidden_states"].shape == (1, n, TINY["hidden_size"])


def _causal_lm(v: dict[str, Any]) -> None:
    n = v["inputs"]["input_ids"].shape[1]
    assert v["config"].is_decoder and v["model"].config.is_decoder
    assert v["prediction_logits"].shape == (1, n, TINY["vocab_size"])


def _masked_lm(v: dict[str, Any]) -> None:
    inputs = v["inputs"]
    assert v["logits"].shape == (1, inputs["input_ids"].shape[1], TINY["vocab_size"])
    assert v["mask_token_index"].shape == (1,) and v["predicted_token_id"].shape == (1,)
    # the doc's defect (KNOWN_DOC_DEFECTS): "Paris." is one piece shorter than "<mask>."
    assert v["labels"].shape == (1, inputs["input_ids"].shape[1] - 1) and "outputs" not in v


def _single_label(v: dict[str, Any]) -> None:
    assert v["logits"].shape == (1, 2) and v["num_labels"] == 2
    assert isinstance(v["predicted_class_id"], int) and v["predicted_class_id"] in (0, 1)
    _loss(v["loss"])


def _multi_label(v: dict[str, Any]) -> None:
    assert v["model"].config.problem_type == "multi_label_classification"
    assert v["logits"].shape == (1, 2) and v["predicted_class_ids"].dtype == torch.long
    assert v["labels"].shape == (1, 2) and v["labels"].dtype == torch.float32
    _loss(v["loss"])


def _multiple_choice(v: dict[str, Any]) -> None:
    assert v["encoding"]["input_ids"].shape[0] == 2 and v["logits"].shape == (1, 2)
    _loss(v["loss"])


def _token_classification(v: dict[str, Any]) -> None:
    n = v["inputs"]["input_ids"].shape[1]
    assert v["logits"].shape == (1, n, 2) and v["predicted_token_class_ids"].shape == (1, n)
    labels = v["model"].config.id2label
    assert len(v["predicted_tokens_classes"]) == n and set(v["predicted_tokens_classes"]) <= set(labels.values())
    _loss(v["loss"])


def _question_answering(v: dict[str, Any]) -> None:
    n = v["inputs"]["input_ids"].shape[1]
    assert v["outputs"].start_logits.shape == v["outputs"].end_logits.shape == (1, n)
    assert v["answer_start_index"].shape == () and v["predict_answer_tokens"].dim() == 1
    _loss(v["loss"])


#: Shape and type checks per example (``section: label``): the doc's outputs are those of the
#: real model, which a tiny random checkpoint cannot reproduce.
EXPECTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "XLMRobertaXLConfig: Examples": _default_config,
    "XLMRobertaXLModel: Example": _backbone,
    "XLMRobertaXLForCausalLM: Example": _causal_lm,
    "XLMRobertaXLForMaskedLM: Example": _masked_lm,
    "XLMRobertaXLForSequenceClassification: Example of single-label classification": _single_label,
    "XLMRobertaXLForSequenceClassification: Example of multi-label classification": _multi_label,
    "XLMRobertaXLForMultipleChoice: Example": _multiple_choice,
    "XLMRobertaXLForTokenClassification: Example": _token_classification,
    "XLMRobertaXLForQuestionAnswering: Example": _question_answering,
}


#: Steps of the doc that fail with HF's own classes and tokenizers too, and why: there ours
#: must raise HF's error at the same step (checked by `compare_runs`) and go on as doctest does.
KNOWN_DOC_DEFECTS: dict[str, dict[str, str]] = {
    "XLMRobertaXLForMaskedLM: Example": {
        "labels = torch.where(inputs.input_ids == tokenizer.mask_token_id, labels, -100)":
            "XLM-R's SentencePiece model cuts '<mask>.' into '<mask>', '▁', '.' (10 ids) but 'Paris.' into "
            "'▁Paris', '.' (9 ids; HF's fast and slow tokenizers alike), so the masked input and the labels "
            "differ in length (RuntimeError from torch.where)",
        "outputs = model(**inputs, labels=labels)":
            "labels is still the 9 ids of the unmasked text, logits have 10 positions (ValueError from the loss)",
    },
}


def check_run(example: DocExample, ours: Run, theirs: Run, *, values: bool) -> None:
    assert example.name in EXPECTED, f"no shape checks for the doc's example {example.name!r}: add them to EXPECTED"
    failed = [example.steps[index].source.strip() for index, _, _ in ours.errors]
    assert failed == list(KNOWN_DOC_DEFECTS.get(example.name, {})), f"steps that raised: {ours.errors}"
    for run in (ours, theirs):
        EXPECTED[example.name](run.variables)
    models = [v for v in ours.variables.values() if isinstance(v, nn.Module)]
    assert models and all(type(m).__module__.startswith("modeling.") for m in models), "our classes did not run"
    compare_runs(ours, theirs, values=values)


# ------------------------------------------------------------------------------ tests
def test_the_doc_has_the_seed_examples() -> None:
    if not EXAMPLES:
        pytest.skip(DOC_REASON)
    sections = {example.section for example in EXAMPLES}
    classes = {"XLMRobertaXLConfig", "XLMRobertaXLModel", "XLMRobertaXLForCausalLM", "XLMRobertaXLForMaskedLM",
               "XLMRobertaXLForSequenceClassification", "XLMRobertaXLForMultipleChoice",
               "XLMRobertaXLForTokenClassification", "XLMRobertaXLForQuestionAnswering"}
    assert sections == classes and len(EXAMPLES) >= 9
    assert all(len(example.steps) >= 3 for example in EXAMPLES)


@pytest.mark.parametrize("example", _params())
def test_example_runs_as_written_and_equals_hf(example: DocExample, checkpoints: Callable[[str], Path]) -> None:
    """On a checkpoint holding every weight of the class the example loads: HF's values."""
    checkpoint = checkpoints(model_class_name(example)) if loads_checkpoint(example) else None
    ours = run_example(example, our_class, checkpoint)
    theirs = run_example(example, hf_class, checkpoint)
    check_run(example, ours, theirs, values=True)


@pytest.mark.parametrize("example", _params())
def test_example_runs_on_a_masked_lm_checkpoint(example: DocExample, checkpoints: Callable[[str], Path]) -> None:
    """On a masked-LM checkpoint, as the released ones are: the heads an example loads are
    initialised (differently from HF's random draws), so names, shapes and types are compared."""
    if not loads_checkpoint(example):
        pytest.skip("the example loads no checkpoint")
    checkpoint = checkpoints("XLMRobertaXLForMaskedLM")
    ours = run_example(example, our_class, checkpoint)
    theirs = run_example(example, hf_class, checkpoint)
    check_run(example, ours, theirs, values=False)


SNIPPET = """## Section

Some text.

Example of a display:

```
>>> x = 1 + 1
>>> x
2
>>> for i in range(3):
...     x += i
>>> 
>>> y = x / 0
>>> x, "a"
(5, 'a')
```
"""


def test_reader_and_displayed_values() -> None:
    (example,) = read_examples(SNIPPET)
    assert (example.section, example.label, len(example.steps)) == ("Section", "Example of a display", 5)
    run = run_example(example, our_class, Path("unused"))
    assert run.variables == {"x": 5, "i": 2}  # a step that raises binds nothing, the next one runs
    assert run.errors == [(3, "ZeroDivisionError", "division by zero")]
    assert run.displayed == [("2\n", 2), ("(5, 'a')\n", (5, "a"))]
    compare_runs(run, run, values=True)
    wrong = Run(run.variables, [("2\n", 2), ("(5, 'a')\n", [5, "a"])], run.errors)
    with pytest.raises(AssertionError, match="shows"):
        compare_runs(wrong, wrong, values=True)


@pytest.mark.parametrize("source, match", [
    ("import transformers", "module itself"),
    ("m = X.from_pretrained('some-other/model')", "not a hub name"),
    ("m = X.from_pretrained(path)", "not a hub name"),
])
def test_substitution_refuses_what_it_cannot_map(source: str, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        _Substitute(Path("checkpoint")).visit(ast.parse(source))


def test_substitution() -> None:
    source = "from transformers import AutoTokenizer, RobertaConfig as C\nm = A.from_pretrained('roberta-base', x=1)"
    tree = _Substitute(Path("/ckpt")).visit(ast.parse(source))
    assert ast.unparse(tree).splitlines() == [
        "AutoTokenizer = __doc_import__('AutoTokenizer')", "C = __doc_import__('RobertaConfig')",
        "m = A.from_pretrained('/ckpt', x=1)"]
    assert our_class("RobertaConfig") is modeling.XLMRobertaXLConfig
    assert hf_class("RobertaForCausalLM") is transformers.XLMRobertaXLForCausalLM
