"""Load and save model archives: the one place that knows TorchScript and torch.export formats.

Whatever the user uploads, the engine works on a single representation: an FX
``GraphModule`` of ATen ops whose ``get_attr`` names are the archive's state-dict names.
TorchScript goes through ``TS2EPConverter`` (hooks and ``functional_call`` refuse loaded
ScriptModules), ``.pt2`` archives through ``torch.export.load``. Saving goes the other way:
the masked checkpoint is the *original* archive with pruned units' parameters zeroed, so a
user gets back exactly the format (and code) they uploaded.
"""

from __future__ import annotations

import contextlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import fx

from bise_core.archives import check_expansion
from bise_core.errors import ModelFormatError

ModelFormat = Literal["torchscript", "export"]


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's deprecation chatter (``torch.jit`` is deprecated in 2.14) for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.simplefilter("ignore", UserWarning)  # converter notes such as unused buffers
        yield


def detect_format(path: Path) -> ModelFormat:
    """Tell the archive kind from its zip layout, without unpickling anything."""
    if not path.is_file():
        raise ModelFormatError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(
            f"{path.name} is not a TorchScript (torch.jit.save) or torch.export (.pt2) archive"
        )
    check_expansion(path, ModelFormatError)
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(f"{path.name} is a corrupt archive: {exc}") from exc
    # ``<root>/models/`` only: TorchScript archives hold ``<root>/code/__torch__/<pkg>/models/...``
    if any(n.endswith("/archive_format") or n.split("/")[1:2] == ["models"] for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        raise ModelFormatError(
            f"{path.name} looks like a torch.save pickle (state dict or nn.Module); "
            "save the model with torch.jit.save(torch.jit.script(model)) or torch.export.save"
        )
    raise ModelFormatError(f"{path.name} is a zip file but not a TorchScript or torch.export archive")


@dataclass
class LoadedModel:
    """A model ready for the engine: its frozen eval-mode FX graph plus where it came from."""

    format: ModelFormat
    path: Path
    graph_module: fx.GraphModule | None
    #: Set instead of ``graph_module`` when a TorchScript model could not become an FX graph.
    scripted: torch.jit.ScriptModule | None = None
    conversion_error: str | None = None

    @property
    def module(self) -> torch.nn.Module:
        """Whatever runs the model: the FX graph, or the ScriptModule in fallback mode."""
        return self.graph_module if self.graph_module is not None else self.scripted  # type: ignore[return-value]


def fetch_attr(module: torch.nn.Module, qualified_name: str) -> Any:
    """``getattr`` chain over a dotted name ('' is the module itself). Plain attribute access
    is the one lookup that works on GraphModules and loaded ScriptModules alike."""
    obj: Any = module
    for part in qualified_name.split(".") if qualified_name else []:
        obj = getattr(obj, part)
    return obj


def load_model(path: Path | str, example_input: torch.Tensor) -> LoadedModel:
    """Load an archive into a frozen eval-mode FX graph.

    ``example_input`` (a couple of real samples) is needed because TorchScript archives carry
    no input shapes, and the converter traces through the graph with it.
    """
    path = Path(path)
    fmt = detect_format(path)
    with quiet_torch():
        try:
            gm = _torchscript_to_fx(path, example_input) if fmt == "torchscript" else _export_to_fx(path)
        except ModelFormatError:
            raise
        except Exception as exc:  # the archive itself is at fault: report it, not a traceback
            if fmt == "torchscript":
                return _script_fallback(path, example_input, exc)
            raise ModelFormatError(f"could not load {path.name} as {fmt}: {_first_line(exc)}") from exc
    freeze_for_inference(gm)
    loaded = LoadedModel(format=fmt, path=path, graph_module=gm)
    _check_runs(loaded, example_input)
    return loaded


def _script_fallback(path: Path, example_input: torch.Tensor, conversion_error: Exception) -> LoadedModel:
    """Keep a ScriptModule the converter cannot turn into a graph (data-dependent control
    flow such as nn.MultiheadAttention): it is gated by reassigning parameters instead."""
    try:
        scripted = _load_scripted(path)
    except Exception as exc:
        raise ModelFormatError(f"could not load {path.name} as torchscript: {_first_line(exc)}") from exc
    loaded = LoadedModel(format="torchscript", path=path, graph_module=None, scripted=scripted,
                         conversion_error=_first_line(conversion_error))
    _check_runs(loaded, example_input)
    return loaded


def _first_line(exc: BaseException) -> str:
    """One readable line; TorchScript puts its real message on the last line, after a trace."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return type(exc).__name__
    line = text[-1].strip() if "TorchScript interpreter" in text[0] else text[0]
    return line if line.split(":")[0].endswith("Error") else f"{type(exc).__name__}: {line}"


def _load_scripted(path: Path) -> torch.jit.ScriptModule:
    with quiet_torch():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def _torchscript_to_fx(path: Path, example_input: torch.Tensor) -> fx.GraphModule:
    from torch._export.converter import TS2EPConverter

    scripted = _load_scripted(path)
    program = TS2EPConverter(scripted, (example_input,)).convert()
    return program.module()


def _load_program(path: Path) -> torch.export.ExportedProgram:
    # Through a file object: torch warns about any archive name not ending in .pt2, and the
    # CLI's contract names every checkpoint ``*.pt`` whatever its format.
    with path.open("rb") as handle:
        return torch.export.load(handle)


def _save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    with path.open("wb") as handle:
        torch.export.save(program, handle)


def _export_to_fx(path: Path) -> fx.GraphModule:
    return _load_program(path).module()


_TRAINING_FLAG_ARG = {
    # op overload packet name -> index of its ``training`` argument
    "batch_norm": 5,
    "dropout": 2,
    "feature_dropout": 2,
    "alpha_dropout": 2,
}


def freeze_for_inference(gm: fx.GraphModule) -> None:
    """Turn a graph into its inference form in place, whatever mode it was exported in.

    ``.eval()`` is refused on exported modules, and a model exported in train mode carries
    ``training=True`` in its batch-norm/dropout calls: BISE must see the frozen network, so
    the flags are rewritten, running-stat updates dropped, shape guards removed (the engine
    feeds other batch sizes than the export example) and every tensor stops tracking grads.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        packet = getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")
        if packet in _TRAINING_FLAG_ARG and len(node.args) > _TRAINING_FLAG_ARG[packet]:
            args = list(node.args)
            args[_TRAINING_FLAG_ARG[packet]] = False
            node.args = tuple(args)
        elif packet.endswith("_") and not node.users and _reads_buffer(node):
            graph.erase_node(node)  # e.g. num_batches_tracked.add_(1)
        elif "assert" in packet or packet.startswith("sym_constrain"):
            if not node.users:
                graph.erase_node(node)
    graph.lint()
    gm.recompile()
    for tensor in list(gm.parameters()) + list(gm.buffers()):
        tensor.requires_grad_(False)


def _reads_buffer(node: fx.Node) -> bool:
    first = node.args[0] if node.args else None
    return isinstance(first, fx.Node) and first.op == "get_attr"


def _check_runs(loaded: LoadedModel, example_input: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = first_output(loaded.module(example_input))
    except Exception as exc:
        raise ModelFormatError(
            f"the model does not run on the dataset's inputs of shape {list(example_input.shape)}: "
            f"{_first_line(exc)}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelFormatError(
            "the model must return logits of shape [batch, classes]; got "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )


def first_output(out: Any) -> torch.Tensor:
    """Models may return a tuple/list/dict; the logits are the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    return out


def save_masked(loaded: LoadedModel, zeroed: dict[str, torch.Tensor], out_path: Path) -> None:
    """Write the original archive with ``zeroed[name]`` (a bool index over dim 0) set to zero.

    The archive is reloaded from disk so the user's own code/graph is preserved byte for byte
    apart from the zeroed rows.
    """
    with quiet_torch():
        if loaded.format == "torchscript":
            module = _load_scripted(loaded.path)
            state = module.state_dict()
            _zero_rows(state, zeroed)
            torch.jit.save(module, str(out_path))
        else:
            program = _load_program(loaded.path)
            state = dict(program.state_dict)
            state.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
            _zero_rows(state, zeroed)
            _save_program(program, out_path)


def _zero_rows(state: dict[str, torch.Tensor], zeroed: dict[str, torch.Tensor]) -> None:
    missing = [name for name in zeroed if name not in state]
    if missing:
        raise RuntimeError(f"parameters not found in the archive: {missing[:5]}")
    with torch.no_grad():
        for name, rows in zeroed.items():
            state[name][rows.to(state[name].device)] = 0


def save_graph_module(gm: fx.GraphModule, fmt: ModelFormat, example_input: torch.Tensor, out_path: Path) -> None:
    """Save an FX graph (e.g. the slimmed model) in the user's format.

    TorchScript: traced from the graph (ATen ops trace cleanly). Export: re-exported with a
    dynamic batch dimension so the archive accepts any batch size.
    """
    with quiet_torch():
        if fmt == "torchscript":
            traced = torch.jit.trace(gm, (example_input,), check_trace=False)
            torch.jit.save(traced, str(out_path))
        else:
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(gm, (example_input,), dynamic_shapes=({0: batch},), strict=False)
            _save_program(program, out_path)


