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
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd

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
                   presets: Mapping[str, str] | str | None = None, data_root: str | None = None,
                   settings: Mapping[str, Any] | None = None) -> list:
    """RunSpecs for methods × datasets × shots × seeds through the one spec builder
    (`workbench.protocols.build_specs`), so the same request from the shell or the demo is the same run.

    `train_settings` are training settings ({"epochs": 2} or {"train.epochs": 2}); `epochs` is a shortcut
    for train.epochs. Methods that train nothing (zero-shot) run once per dataset and take none of them.
    `presets` picks a preset per method ({"mmrl": "toy"}); a single name applies to every method that has
    such a preset (the others keep the automatic choice). `data_root` holds the real datasets (part of
    each run's identity; default $WORKBENCH_DATA). `settings`: namespaced method/training settings
    ({"method.alpha": 0.5}, an ablation row), applied before `train_settings` and `epochs`.
    `datasets`: one run per entry; an entry that is a list is one run over those datasets (a transfer
    run: the source first, then the targets)."""
    from .protocols.builder import build_specs

    merged = dict(settings or {})
    merged.update({f"train.{k.removeprefix('train.')}": v for k, v in (train_settings or {}).items()})
    if epochs is not None:
        merged["train.epochs"] = int(epochs)
    groups = [datasets] if isinstance(datasets, str) else [tuple(g) if isinstance(g, (list, tuple)) else g
                                                           for g in datasets]
    return build_specs(list(methods), protocol, groups, shots=shots, seeds=list(seeds), backbone=backbone,
                       pretrained=pretrained, presets=presets, settings=merged, data_root=data_root)


def launch(specs: Sequence, registry=None, *, device: str | None = None, data_root: str | None = None,
           progress: bool = False, show: Sequence[str] = (), stop_on_error: bool = False) -> list:
    """Run each spec (`workbench.runs.execute.run_specs`: a finished run is reused, one line per run; a
    failing run is reported and skipped unless `stop_on_error`). Returns the outcomes (`.ok`, `.run`,
    `.spec`, `.reused`, `.error`)."""
    from .runs.execute import run_specs

    return run_specs(specs, registry, device=device, data_root=data_root, progress=progress, show=show or None,
                     stop_on_error=stop_on_error, echo=lambda line: print(line, flush=True))


def variant_table(registry, launched: Mapping[str, Sequence], metrics: Sequence[str], paper) -> "pd.DataFrame":
    """Ablation rows: per variant (paper setting label -> its launched runs), `compare.aggregate_runs` of
    its runs joined with the paper's cells of that setting (`compare.ours_vs_paper(..., setting=label)`).
    The long table gets a `variant` column first; `method` becomes "<method> [<label>]" so that the
    display table and the figure keep the variants apart."""
    import pandas as pd

    from .analysis import compare

    parts = []
    for label, outcomes in launched.items():
        hashes = [r.run.hash for r in outcomes if r.ok]
        if not hashes:
            continue
        ours = compare.aggregate_runs(registry.list(hash=hashes), metrics)
        table = compare.ours_vs_paper(ours, paper, setting=label)
        table.insert(0, "variant", label)
        table["method"] = table["method"] + f" [{label}]"
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=["variant"] + list(compare.TABLE_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def hardware() -> str:
    """The machine in words: GPU name (CUDA) or CPU model and thread count, with torch's version."""
    import platform

    import torch

    if torch.cuda.is_available():
        where = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        where = f"CPU {cpu}, {torch.get_num_threads()} torch threads"
    return f"{where}; torch {torch.__version__}"


def measure_efficiency(spec, *, batch_size: int = 100, repeats: int = 3, device: str | None = None,
                       classes: Sequence[str] | None = None) -> dict:
    """Trainable parameters and inference speed of the method a spec builds, at the spec's backbone.

    Parameters are counted as `workbench methods show` counts them (`trainable_parameter_report` on the
    method built with the spec's resolved config). Speed: images per second of `eval_logits` on a batch of
    `batch_size` random images at the backbone's resolution (one warm-up pass, then the best of
    `repeats`), for `classes` (default: 100 placeholder class names, like the paper's 100-image batches)."""
    import time

    import torch

    from .backbone import trainable_parameter_report
    from .methods import get_method_class
    from .methods.base import ClassTask
    from .models import load_backbone
    from .protocols.base import method_config_for

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    backbone = load_backbone(spec.backbone, spec.pretrained, device=dev)
    task = ClassTask(spec.source, tuple(classes or (f"class {i}" for i in range(100))))
    method = get_method_class(spec.method)(backbone, task, method_config_for(spec)).to(dev)
    report = trainable_parameter_report(method)
    method.eval()
    size = backbone.image_size if isinstance(backbone.image_size, int) else backbone.image_size[0]
    images = torch.randn(batch_size, 3, size, size, device=dev)
    best = float("inf")
    with torch.no_grad():
        method.prepare_eval(task, "base")
        method.eval_logits(images)  # warm-up (text features, kernels)
        for _ in range(max(1, repeats)):
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            method.eval_logits(images)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return {"method": spec.method, "params": report["trainable"], "params_total": report["total"],
            "params_percent": report["trainable_percent"], "fps": batch_size / best, "batch_size": batch_size,
            "device": dev, "hardware": hardware()}


def dataset_statistics(datasets: Sequence[str], data_root: str | None = None, verify: str = "none") -> "pd.DataFrame":
    """Per dataset: the manifest's expected class/train/val/test counts and what `workbench data check`
    finds under `data_root` (status and counts; "missing" when the data is not there)."""
    import pandas as pd

    from .data import load_manifest
    from .data.check import check_dataset

    rows = []
    for name in datasets:
        m = load_manifest(name)
        rep = check_dataset(name, data_root, verify=verify, explicit=True)
        status = rep.status
        if status != "ok" and data_root is None and not m.is_toy and any("data root" in x for x in rep.problems):
            status = "no data root"
        row = {"dataset": name, "display_name": m.display_name, "status": status}
        for key in ("classes", "train", "val", "test"):
            row[f"{key} (manifest)"] = getattr(m.expected, key, None)
            found = rep.classes if key == "classes" else rep.counts.get(key)
            row[f"{key} (found)"] = found
        row["template"] = (m.templates or [""])[0]
        row["problems"] = "; ".join(rep.problems)
        rows.append(row)
    return pd.DataFrame(rows)


def efficiency_table(registry, launched: Mapping[str, Sequence], measured: Mapping[str, dict], paper,
                     hm_metric: str = "hm") -> "pd.DataFrame":
    """MMRL Table 6's columns per row label (the paper's method name, e.g. "MMRL*"): trainable parameters
    (millions) and inference speed (images/s) as `measure_efficiency` measured them, training time (minutes,
    mean over seeds of the runs' `train_seconds`) and HM (mean over seeds and datasets) from the runs,
    each beside the paper's value (Table 6 reports cost on ImageNet, HM averaged over 11 datasets)."""
    import numpy as np
    import pandas as pd

    def paper_value(label, metric):
        cells = paper[(paper["method"] == label) & (paper["metric"] == metric)]
        return float(cells["value"].iloc[0]) if len(cells) else np.nan

    rows = []
    for label, outcomes in launched.items():
        ok = [r for r in outcomes if r.ok]
        runs = registry.list(hash=[r.run.hash for r in ok]) if ok else pd.DataFrame()
        m = measured.get(label) or {}
        train_min = (float(pd.to_numeric(runs["train_seconds"], errors="coerce").mean()) / 60
                     if "train_seconds" in runs.columns and len(runs) else np.nan)
        hm = float(pd.to_numeric(runs[hm_metric], errors="coerce").mean()) if hm_metric in runs.columns and len(runs) else np.nan
        rows.append({
            "method": label, "workbench_method": ok[0].spec.method if ok else "", "runs": len(ok),
            "params_M": m.get("params", np.nan) / 1e6 if m else np.nan, "params_M paper": paper_value(label, "params"),
            "fps": m.get("fps", np.nan), "fps paper": paper_value(label, "fps"),
            "train_min": train_min, "train_min paper": paper_value(label, "train_time_total"),
            "train_ms_per_image paper": paper_value(label, "train_time_per_image"),
            hm_metric: hm, f"{hm_metric} paper": paper_value(label, hm_metric),
            "fps batch": m.get("batch_size"), "hardware": m.get("hardware", ""),
        })
    return pd.DataFrame(rows)


def paired_bars_figure(table: "pd.DataFrame", pairs: Sequence[tuple[str, str, str]], *, x: str = "method",
                       title: str | None = None, log_y: Sequence[str] = ()):
    """One panel per (title, ours column, paper column): grouped bars, ours beside the paper; a paper
    value that is missing leaves its bar out."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .analysis.compare import OURS_COLOR, PAPER_COLOR

    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[p[0] for p in pairs])
    for i, (name, ours, theirs) in enumerate(pairs, start=1):
        fig.add_trace(go.Bar(x=table[x], y=table[ours], name="ours", marker_color=OURS_COLOR, legendgroup="ours",
                             showlegend=i == 1), row=1, col=i)
        if theirs in table.columns and table[theirs].notna().any():
            fig.add_trace(go.Bar(x=table[x], y=table[theirs], name="paper", marker_color=PAPER_COLOR,
                                 legendgroup="paper", showlegend=True), row=1, col=i)
        if name in log_y:
            fig.update_yaxes(type="log", row=1, col=i)
    fig.update_layout(barmode="group", title=title, height=420)
    return fig


def dataset_statistics_table(stats: "pd.DataFrame", paper) -> "pd.DataFrame":
    """Long: dataset x (classes, train, val, test) with the manifest's count, what `data check` found,
    the paper's Table 7 value and manifest − paper."""
    import numpy as np
    import pandas as pd

    rows = []
    for _, s in stats.iterrows():
        for key in ("classes", "train", "val", "test"):
            cells = paper[(paper["dataset"] == s["dataset"]) & (paper["metric"] == key)]
            value = float(cells["value"].iloc[0]) if len(cells) else np.nan
            manifest = s[f"{key} (manifest)"]
            manifest = np.nan if manifest is None or pd.isna(manifest) else float(manifest)
            found = s[f"{key} (found)"]
            found = np.nan if found is None or pd.isna(found) else float(found)
            note = "" if len(cells) else "not in the paper's table"
            rows.append({"dataset": s["dataset"], "metric": key, "manifest": manifest, "found": found,
                         "paper": value, "diff": manifest - value, "status": s["status"], "note": note})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# the index: every table and figure of the five papers, and the notebook that reproduces it
# ------------------------------------------------------------------------------------------------
INDEX_FILE = "index.yaml"
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


def _item_order(item: str) -> tuple:
    """'Table 10' after 'Table 9'; Roman numerals (DAM's 'Table IX') by value."""
    kind, _, number = item.partition(" ")
    number = number.strip()
    if number.isdigit():
        return (kind, int(number))
    if number and set(number) <= set(_ROMAN):
        total = 0
        for a, b in zip(number, number[1:] + " "):
            v = _ROMAN[a]
            total += -v if b in _ROMAN and _ROMAN[b] > v else v
        return (kind, total)
    return (kind, 10**6, number)


def notebook_info(path: str | Path) -> dict:
    """The notebook's `workbench` metadata: {"paper": "mmrl", "tables": ["Table 1"], "figures": [...]}."""
    nb = json.loads(Path(find_notebook(path)).read_text(encoding="utf-8"))
    info = dict(nb.get("metadata", {}).get("workbench") or {})
    info.setdefault("tables", [])
    info.setdefault("figures", [])
    return info


def notebook_index(directory: Path | None = None) -> list[dict]:
    """One row per table (data_manifests/paper_results) and figure (notebooks/index.yaml) of the five
    papers: paper, item, kind, caption, notebook (None if none), command (to run it), note."""
    import yaml

    from .data.paper_results import PAPERS, load_paper_results

    directory = Path(directory) if directory is not None else NOTEBOOKS_DIR
    index_file = directory / INDEX_FILE
    extra = yaml.safe_load(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    covered: dict[tuple[str, str], list[str]] = {}
    for nb in list_notebooks(directory):
        info = notebook_info(nb)
        for item in list(info["tables"]) + list(info["figures"]):
            covered.setdefault((info.get("paper", ""), item), []).append(nb.stem)
    items: list[dict] = []
    results = load_paper_results()
    for paper in PAPERS:
        df = results[results["paper"] == paper]
        tables = dict.fromkeys(df["table"])
        for table in sorted(tables, key=_item_order):
            caption = str(df[df["table"] == table]["caption"].iloc[0])
            items.append({"paper": paper, "item": table, "kind": "table", "caption": caption})
        figures = ((extra or {}).get("figures") or {}).get(paper) or {}
        for fig in sorted(figures, key=_item_order):
            value = figures[fig]
            caption, note = (value.get("caption", ""), value.get("note", "")) if isinstance(value, dict) else (value, "")
            items.append({"paper": paper, "item": fig, "kind": "figure", "caption": caption, "note": note})
    notes = (extra or {}).get("notes") or {}
    for row in items:
        names = covered.get((row["paper"], row["item"]), [])
        row["notebook"] = names[0] if names else None
        row["notebooks"] = names
        row["command"] = f"workbench notebooks run {names[0]}" if names else None
        row["note"] = row.get("note") or (notes.get(row["paper"]) or {}).get(row["item"], "")
    return items


def format_index(items: Sequence[dict]) -> str:
    lines = []
    done = sum(1 for r in items if r["notebook"])
    for paper in dict.fromkeys(r["paper"] for r in items):
        rows = [r for r in items if r["paper"] == paper]
        have = sum(1 for r in rows if r["notebook"])
        lines.append(f"{paper.upper()} ({have} of {len(rows)} with a notebook)")
        for r in rows:
            caption = r["caption"] if len(r["caption"]) <= 70 else r["caption"][:67] + "..."
            if r["notebook"]:
                status = r["command"]
            else:
                status = "no notebook" + (f" ({r['note']})" if r["note"] else "")
            lines.append(f"  {r['item']:<11} {status}")
            lines.append(f"  {'':<11}   {caption}")
    lines.append(f"\n{done} of {len(items)} tables and figures have a notebook.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _cmd_list(args) -> int:
    if args.index_only:
        print(format_index([r for r in notebook_index() if args.paper in (None, r["paper"])]))
        return 0
    notebooks = list_notebooks()
    if not notebooks:
        print(f"no notebooks in {NOTEBOOKS_DIR}")
    for nb in notebooks:
        if args.paper is not None and notebook_info(nb).get("paper") != args.paper:
            continue
        print(f"{nb.stem}: {notebook_title(nb)}")
        for name, p in notebook_parameters(nb).items():
            help_text = f"  # {p['help']}" if p.get("help") else ""
            print(f"    {name} = {p['default']}{help_text}")
    print(f"\nrun one with: workbench notebooks run NAME [-p KEY VALUE ...] [--output-dir DIR]")
    print("\nEvery table and figure of the five papers:")
    print(format_index([r for r in notebook_index() if args.paper in (None, r["paper"])]))
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

    p = sub.add_parser("list", help="the notebooks and their parameters (with defaults), then every table and "
                                    "figure of the five papers with its notebook (or none) and the command")
    p.add_argument("--paper", default=None, help="only this paper (mmrl, dam, dsra, glad, rada)")
    p.add_argument("--index", dest="index_only", action="store_true", help="only the table/figure index")
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
