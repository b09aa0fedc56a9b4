"""`psyattr demo`: the main job end to end on OMI with the shipped base nets, in about a quarter of an hour."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.data.fetch import find_omi
from psyattr.data.rated import PAPER_ATTRIBUTES, read_omi
from psyattr.grid import collect_runs, plot_fig3, run_grid, write_table1
from psyattr.studies.common import load_study_model, model_inputs, held_out_faces

EXPRESSIONS_FOLDER = "yalefaces_expressions"


class Steps:
    """Prints each step with the time it took, and remembers what every step produced."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.start = time.perf_counter()
        self.outputs: dict[str, Any] = {}

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        """Run one step, printing its name before and its duration after."""
        self.echo(f"[{time.perf_counter() - self.start:6.0f} s] {name} ...")
        began = time.perf_counter()
        result = action()
        self.echo(f"[{time.perf_counter() - self.start:6.0f} s] {name}: done in {time.perf_counter() - began:.0f} s")
        return result


def find_expressions(data_dir: str | os.PathLike | None) -> Path | None:
    """The Yale (or KDEF) expression folder beside OMI or under $PSYATTR_DATA_DIR, if there is one."""
    candidates = [Path(data_dir) / EXPRESSIONS_FOLDER] if data_dir else []
    if os.environ.get("PSYATTR_DATA_DIR"):
        candidates.append(Path(os.environ["PSYATTR_DATA_DIR"]) / EXPRESSIONS_FOLDER)
    return next((c for c in candidates if c.is_dir()), None)


def run_demo(out_dir: str | os.PathLike, data: str | os.PathLike | None = None, epochs: int = 120,
             occlusion_faces: int | None = None, quality_faces: int = 12, serve: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune, evaluate, explain, occlude, compare, export, serve, report: every result under `out_dir`."""
    from psyattr.models.loading import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = Steps(echo)
    omi = find_omi(data)
    faces = read_omi(omi)
    echo(f"OMI: {len(faces)} rated faces from {omi}")
    for task in ("age", "gender"):
        load_model(task)  # the shipped base nets must load (and pass their hash check) before any work starts
    grid_dir = out_dir / "grid"
    spec = {"kind": "omi", "path": str(Path(omi).resolve())}
    steps.run(f"fine-tuning the age- and gender-based models (dense mode, {epochs} epochs, four attributes)",
              lambda: run_grid(faces, grid_dir, spec, modes=("dense",), attributes=PAPER_ATTRIBUTES,
                               epochs={"dense": epochs}, joint=True))
    runs = collect_runs(grid_dir)
    table, _ = write_table1(runs, grid_dir)
    plot_fig3(runs, grid_dir / "fig3_learning_curves.png")
    steps.outputs["table1"] = table
    models = [load_study_model(grid_dir / f"{base}_dense_joint") for base in ("age", "gender")]
    test = held_out_faces(faces)

    from psyattr.studies.comparison import comparison_study
    from psyattr.studies.expressions import expression_study
    from psyattr.studies.faithfulness import faithfulness_study
    from psyattr.studies.heatmaps import heatmap_study
    from psyattr.studies.occlusion import occlusion_study

    steps.run("explaining test faces (LRP heatmaps, one scale per attribute)",
              lambda: heatmap_study(models, faces, PAPER_ATTRIBUTES, test[:5], out_dir / "heatmaps"))
    chosen = test[:occlusion_faces] if occlusion_faces else test
    steps.outputs["occlusion"] = steps.run(
        f"occlusion test on {len(chosen)} test faces (mouth, right eye, both eyes)",
        lambda: occlusion_study(models, faces, "happy", chosen, out_dir / "occlusion"))
    expressions = find_expressions(Path(omi).parent)
    if expressions is not None:
        steps.outputs["expressions"] = steps.run(
            f"expression pairs from {expressions}",
            lambda: expression_study(models, expressions, out_dir / "expressions", "happy"))
    else:
        echo(f"no {EXPRESSIONS_FOLDER} folder beside OMI or under PSYATTR_DATA_DIR: expression pairs skipped")
    steps.outputs["comparison"] = steps.run(
        "comparing the age- and gender-based models",
        lambda: comparison_study(models, faces, "happy", test[:64], out_dir / "comparison"))
    steps.outputs["quality"] = steps.run(
        f"explanation quality (region perturbation) on {quality_faces} faces",
        lambda: faithfulness_study(models[0], faces, "happy", test[:quality_faces], out_dir / "quality", steps=20))
    if serve:
        steps.outputs["serving"] = steps.run("exporting the age-based model and asking the served model over gRPC",
                                             lambda: serve_and_ask(models[0], faces, test[:2], out_dir))
    from psyattr.studies.report import write_report

    report, missing = write_report(out_dir, "psyattr demo: face judgements explained")
    steps.outputs["report"] = report
    steps.outputs["missing_sections"] = missing
    check = check_in_browser(report, out_dir / "report_screenshot.png", echo)
    if check is not None:
        steps.outputs["browser"] = check
    summary = summarise(steps.outputs, out_dir, time.perf_counter() - steps.start)
    echo(summary)
    (out_dir / "demo_summary.txt").write_text(summary + "\n")
    return steps.outputs


def serve_and_ask(entry, faces, indices, out_dir: Path) -> dict[str, Any]:
    """Export `entry`, start the embedded TF-Serving-compatible server, send one real explain request."""
    from psyattr.export import export_model
    from psyattr.lrp import LRPExplainer
    from psyattr.serving.client import ExplainerClient
    from psyattr.serving.server import ModelServer

    models_dir = out_dir / "saved_models"
    version = export_model(entry.model, models_dir, "psyattr_demo_age")
    images, _ = model_inputs([faces.paths[i] for i in indices])
    # XLA stays on: the embedded server would otherwise switch it off for this whole process.
    server = ModelServer(models_dir, port=0, xla_cpu_compilation_enabled=True).start()
    try:
        with ExplainerClient(server.address, "psyattr_demo_age", timeout=120) as client:
            served = client.explain(images, "happy")
    finally:
        server.stop(grace=5)
    local = LRPExplainer(entry.model, "alpha2beta1", jit_compile=False)(images, entry.attribute_index("happy"))
    difference = float(np.abs(served.heatmap - local.relevance.sum(-1)).max() / np.abs(local.relevance.sum(-1)).max())
    return {"export": str(version), "address": server.address, "scores": np.asarray(served.scores).tolist(),
            "max_relative_heatmap_difference": difference}


def check_in_browser(report: Path, screenshot: Path, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """Open the report in headless Chromium when it is installed; None otherwise."""
    from psyattr.studies.browser import check_report
    from psyattr.studies.report import find_chromium

    if find_chromium() is None:
        echo("Chromium not installed: the report was not opened in a browser (Debian: apt-get install chromium)")
        return None
    try:
        return check_report(report, screenshot)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        # The report is written; a browser that fails must not cost the user the demo's closing summary.
        echo(f"the report is written, but Chromium could not open it: {err}")
        return None


def summarise(outputs: dict[str, Any], out_dir: Path, seconds: float) -> str:
    """The closing message: key numbers and where everything is."""
    lines = [f"psyattr demo finished in {seconds / 60:.1f} min. Everything is in {out_dir.resolve()}:"]
    lines.append(f"  report:        {outputs['report']}" + (f" (missing sections: {', '.join(outputs['missing_sections'])})"
                                                           if outputs["missing_sections"] else ""))
    lines.append(f"  Table 1:       {outputs['table1']}")
    lines.append(f"  models:        {out_dir / 'grid'}/<base>_dense_joint/model.keras")
    occlusion = outputs.get("occlusion")
    if occlusion:
        for label, result in occlusion["models"].items():
            changes = ", ".join(f"{name.replace('_', ' ')} {r['mean_change']:+.1f}" for name, r in result["regions"].items())
            lines.append(f"  occlusion ({label}): happiness change {changes} (0-100 scale)")
    expressions = outputs.get("expressions")
    if expressions:
        for label, result in expressions["models"].items():
            lines.append(f"  expressions ({label}): mouth share happy {result['happy']['shares']['mouth']:.1%} vs sad "
                         f"{result['sad']['shares']['mouth']:.1%}; scored happier when happy in "
                         f"{result['happier_when_happy']:.0%} of pairs")
    if outputs.get("comparison"):
        lines.append(f"  base models:   {outputs['comparison']['verdict']}")
    if outputs.get("quality"):
        ranked = sorted(outputs["quality"].items(), key=lambda item: -item[1]["aopc"])
        lines.append("  AOPC:          " + ", ".join(f"{name} {v['aopc']:.3f}" for name, v in ranked))
    serving = outputs.get("serving")
    if serving:
        lines.append(f"  served model:  {serving['export']} answered on {serving['address']}; heatmap differs from "
                     f"in-process by {serving['max_relative_heatmap_difference']:.1e} (relative)")
    browser = outputs.get("browser")
    if browser:
        lines.append(f"  browser check: {len(browser['shown_sections'])} of {len(browser['sections'])} sections "
                     f"rendered with their results, {browser['images']} images, "
                     f"{browser['broken_images']} broken; screenshot {browser['screenshot']}")
    return "\n".join(lines)


__all__ = ["run_demo"]
