"""`workbench notebooks list | run`: the parameterized paper-table notebooks, executed with papermill.

    workbench notebooks list
    workbench notebooks run mmrl_table1_base_to_novel -p seeds "[1]" -p epochs 2
    workbench notebooks run mmrl_table10_11_few_shot -p backbone ViT-B-16-quickgelu -p pretrained openai \\
        -p data_root /data -p datasets "[imagenet, caltech101]"

Parameter values are YAML (`-p seeds "[1, 2]"`, `-p pretrained null`, `-p epochs 5`). The executed
notebook is written to `--output-dir` (default `outputs/notebooks/`) together with
`<name>.results.json` / `<name>.comparison.csv` (the notebook's comparison table), and its path is printed.

The notebooks themselves stay thin: they build RunSpecs with `notebook_specs` and launch (or reuse, by
spec hash) the runs with `launch`, both below; the comparison with the paper is `workbench.analysis.compare`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
DEFAULT_OUTPUT_DIR = Path("outputs") / "notebooks"
KERNEL_NAME = "python3"  # jupyter_client runs a "python" kernelspec with this interpreter (sys.executable)


# ------------------------------------------------------------------------------------------------
# finding and describing notebooks
# ------------------------------------------------------------------------------------------------
def list_notebooks(directory: Path | None = None) -> list[Path]:
    """The notebooks shipped in `notebooks/` (sorted, checkpoints excluded)."""
    directory = Path(directory) if directory is not None else NOTEBOOKS_DIR
    return sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))


def find_notebook(name: str | Path, directory: Path | None = None) -> Path:
    """A notebook by name ("mmrl_table1_base_to_novel", with or without .ipynb) or by path."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    stem = path.name.removesuffix(".ipynb")
    for nb in list_notebooks(directory):
        if nb.stem == stem:
            return nb
    matches = [nb for nb in list_notebooks(directory) if nb.stem.startswith(stem)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(nb.stem for nb in list_notebooks(directory)) or "(none)"
    raise KeyError(f"no notebook {str(name)!r}" + (" (ambiguous)" if matches else "") + f"; notebooks: {known}")


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters cell of a notebook: name -> {"default": source text, "type": inferred type, "help"}."""
    import papermill

    params = papermill.inspect_notebook(str(find_notebook(path)))
    return {name: {"default": p.get("default"), "type": p.get("inferred_type_name"), "help": p.get("help", "")}
            for name, p in params.items()}


def notebook_title(path: str | Path) -> str:
    nb = json.loads(Path(find_notebook(path)).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def parse_parameters(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """[(key, yaml text), ...] -> {key: value}; values are YAML ("[1, 2]" -> [1, 2], "null" -> None)."""
    import yaml

    out = {}
    for key, raw in pairs:
        out[key] = yaml.safe_load(raw) if raw.strip() != "" else ""
    return out


# ------------------------------------------------------------------------------------------------
# running a notebook
# ------------------------------------------------------------------------------------------------
def run_notebook(name: str | Path, parameters: Mapping[str, Any] | None = None, *,
                 output_dir: str | Path | None = None, kernel_name: str = KERNEL_NAME,
                 log_output: bool = False, progress_bar: bool = False, execution_timeout: int | None = None,
                 strict: bool = True) -> Path:
    """Execute a notebook with papermill; returns the path of the executed copy.

    `parameters` are injected after the "parameters" cell (unknown names raise KeyError when `strict`).
    Unless given, `results_path` is set to `<output_dir>/<name>.results.json` so the notebook writes its
    comparison table there. A failing cell raises `papermill.PapermillExecutionError`; the executed copy
    (with the error) is still written.
    """
    import papermill

    source = find_notebook(name)
    parameters = dict(parameters or {})
    declared = notebook_parameters(source)
    unknown = sorted(set(parameters) - set(declared))
    if unknown and strict:
        raise KeyError(f"{source.stem} has no parameter(s) {unknown}; parameters: {sorted(declared)}")
    out_dir = Path(output_dir) if output_dir is not None else DEFAULT_OUTPUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / source.name
    if "results_path" in declared and parameters.get("results_path") is None:
        parameters["results_path"] = str((out_dir / f"{source.stem}.results.json").resolve())
    papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                               log_output=log_output, progress_bar=progress_bar,
                               execution_timeout=execution_timeout)
    return output


# ------------------------------------------------------------------------------------------------
# helpers the notebooks call (building and launching run specs)
# ------------------------------------------------------------------------------------------------
def available_methods(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """(registered, skipped): `methods` split by whether this workbench has them registered."""
    from .methods import list_methods

    registered = set(list_methods())
    return [m for m in methods if m in registered], [m for m in methods if m not in registered]


def notebook_specs(methods: Sequence[str], protocol: str, datasets: Sequence[str], shots: int | Sequence[int],
                   seeds: Sequence[int], *, backbone: str = "toy", pretrained: str | None = None,
                   epochs: int | None = None, train_settings: Mapping[str, Any] | None = None,
                   presets: Mapping[str, str] | str | None = None, data_root: str | None = None) -> list:
    """RunSpecs for methods × datasets × shots × seeds through the one spec builder
    (`workbench.protocols.build_specs`), so the same request from the shell or the demo is the same run.

    `train_settings` are training settings ({"epochs": 2} or {"train.epochs": 2}); `epochs` is a shortcut
    for train.epochs. Methods that train nothing (zero-shot) run once per dataset and take none of them.
    `presets` picks a preset per method ({"mmrl": "toy"}); a single name applies to every method that has
    such a preset (the others keep the automatic choice). `data_root` holds the real datasets (part of
    each run's identity; default $WORKBENCH_DATA)."""
    from .protocols.builder import build_specs

    settings = {f"train.{k.removeprefix('train.')}": v for k, v in (train_settings or {}).items()}
    if epochs is not None:
        settings["train.epochs"] = int(epochs)
    groups = [datasets] if isinstance(datasets, str) else list(datasets)
    return build_specs(list(methods), protocol, groups, shots=shots, seeds=list(seeds), backbone=backbone,
                       pretrained=pretrained, presets=presets, settings=settings, data_root=data_root)


def launch(specs: Sequence, registry=None, *, device: str | None = None, data_root: str | None = None,
           progress: bool = False, show: Sequence[str] = (), stop_on_error: bool = False) -> list:
    """Run each spec (`workbench.runs.execute.run_specs`: a finished run is reused, one line per run; a
    failing run is reported and skipped unless `stop_on_error`). Returns the outcomes (`.ok`, `.run`,
    `.spec`, `.reused`, `.error`)."""
    from .runs.execute import run_specs

    return run_specs(specs, registry, device=device, data_root=data_root, progress=progress, show=show or None,
                     stop_on_error=stop_on_error, echo=lambda line: print(line, flush=True))


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _cmd_list(args) -> int:
    notebooks = list_notebooks()
    if not notebooks:
        print(f"no notebooks in {NOTEBOOKS_DIR}")
        return 0
    for nb in notebooks:
        print(f"{nb.stem}: {notebook_title(nb)}")
        for name, p in notebook_parameters(nb).items():
            help_text = f"  # {p['help']}" if p.get("help") else ""
            print(f"    {name} = {p['default']}{help_text}")
    print(f"\nrun one with: workbench notebooks run NAME [-p KEY VALUE ...] [--output-dir DIR]")
    return 0


def _cmd_run(args) -> int:
    import papermill

    try:
        source = find_notebook(args.name)
        parameters = parse_parameters(args.parameters)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # YAML errors
        print(f"error: bad parameter value: {exc}", file=sys.stderr)
        return 2
    try:
        output = run_notebook(source, parameters, output_dir=args.output_dir, kernel_name=args.kernel,
                              log_output=args.log_output, progress_bar=not args.quiet,
                              execution_timeout=args.timeout)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except papermill.PapermillExecutionError as exc:
        out_dir = Path(args.output_dir) if args.output_dir is not None else DEFAULT_OUTPUT_DIR
        print(f"error: cell {exc.exec_count} failed: {exc.ename}: {exc.evalue}", file=sys.stderr)
        print(f"executed notebook (with the error): {out_dir / source.name}", file=sys.stderr)
        return 1
    print(output)
    return 0


def add_commands(subparsers) -> None:
    nb = subparsers.add_parser("notebooks", help="list and run the parameterized paper-table notebooks (papermill)")
    sub = nb.add_subparsers(dest="notebooks_command", required=True)

    p = sub.add_parser("list", help="the notebooks and their parameters (with defaults)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="execute a notebook with parameters; prints the executed notebook's path")
    p.add_argument("name", help="notebook name (see `workbench notebooks list`) or path to a .ipynb")
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
                   metavar=("KEY", "VALUE"), help="set a parameter; VALUE is YAML: -p seeds \"[1, 2]\" (repeatable)")
    p.add_argument("--output-dir", default=None, help=f"where the executed notebook goes (default {DEFAULT_OUTPUT_DIR}/)")
    p.add_argument("--kernel", default=KERNEL_NAME, help=f"Jupyter kernel name (default {KERNEL_NAME}: this Python)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: no limit)")
    p.add_argument("--log-output", action="store_true", help="stream the notebook's output to the terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)


def main(argv: list[str] | None = None) -> int:  # `python -m workbench.notebooks_cli ...`
    parser = argparse.ArgumentParser(prog="workbench")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
