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
from psyattr.studies.registry import STUDIES

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
    from psyattr.studies.inputs import StudyInputs
    from psyattr.studies.models import load_study_model

    models = [load_study_model(grid_dir / f"{base}_dense_joint") for base in ("age", "gender")]
    inputs = StudyInputs.of(models, faces)  # the faces both runs held out, framed once per framing
    expressions = find_expressions(Path(omi).parent)
    plan = study_plan(inputs, expressions, occlusion_faces, quality_faces)
    for study in STUDIES:
        if study.name not in plan:
            echo(f"no {EXPRESSIONS_FOLDER} folder beside OMI or under PSYATTR_DATA_DIR: {study.name} skipped")
            continue
        study_inputs, options, what = plan[study.name]
        steps.outputs[study.name] = steps.run(
            f"{study.title}: {what}",
            lambda study=study, study_inputs=study_inputs, options=options: study.run(
                study_inputs, out_dir / study.folder, **options))
    if serve:
        steps.outputs["serving"] = steps.run("exporting the age-based model and asking the served model over gRPC",
                                             lambda: serve_and_ask(inputs, out_dir))
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


def study_plan(inputs, expressions: Path | None, occlusion_faces: int | None,
               quality_faces: int) -> dict[str, tuple[Any, dict[str, Any], str]]:
    """Per registered study the demo runs: its inputs, its options, and what the step does (for the log)."""
    held_out = len(inputs.held_out)
    plan = {
        "heatmaps": (inputs, {"attributes": PAPER_ATTRIBUTES, "limit": 5}, "5 test faces, the four attributes"),
        "occlusion": (inputs, {"attribute": "happy", "limit": occlusion_faces},
                      f"{min(occlusion_faces or held_out, held_out)} test faces (mouth, right eye, both eyes)"),
        "comparison": (inputs, {"attribute": "happy", "limit": 64}, "the age- and gender-based models"),
        "quality": (inputs.with_models(inputs.models[:1]),
                    {"attribute": "happy", "limit": quality_faces, "steps": 20},
                    f"the age-based model on {quality_faces} faces"),
    }
    if expressions is not None:
        plan["expressions"] = (inputs, {"pairs": expressions, "attribute": "happy"}, f"pairs from {expressions}")
    unknown = set(plan) - {study.name for study in STUDIES}
    if unknown:
        raise ValueError(f"the demo plans studies the registry does not hold: {', '.join(sorted(unknown))}")
    return plan


def serve_and_ask(inputs, out_dir: Path) -> dict[str, Any]:
    """Export the first model, start the embedded TF-Serving-compatible server, send one real explain request."""
    from psyattr.attribution import build_explainer
    from psyattr.export import export_model
    from psyattr.serving.client import ExplainerClient
    from psyattr.serving.server import ModelServer

    entry = inputs.models[0]
    models_dir = out_dir / "saved_models"
    version = export_model(entry.model, models_dir, "psyattr_demo_age")
    _, usable = inputs.faces(2)
    images = usable.images(entry)  # framed as the model records, as the served client frames photos
    # explain_xla answers too, as on a TF Serving started with --xla_cpu_compilation_enabled=true.
    server = ModelServer(models_dir, port=0, xla_cpu_compilation_enabled=True).start()
    try:
        with ExplainerClient(server.address, "psyattr_demo_age", timeout=120) as client:
            served = client.explain(images, "happy")
    finally:
        server.stop(grace=5)
    # The export's explain signature is traced without XLA: so is the local explanation it is compared with.
    local = build_explainer(entry.model, "alpha2beta1", jit_compile=False)(images, entry.attribute_index("happy"))
    difference = float(np.abs(served.heatmap - local.heatmap).max() / np.abs(local.heatmap).max())
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
        for m in occlusion.models.values():
            changes = ", ".join(f"{name.replace('_', ' ')} {r.mean_change:+.1f}" for name, r in m.regions.items())
            lines.append(f"  occlusion ({m.label}): happiness change {changes} (0-100 scale)")
    expressions = outputs.get("expressions")
    if expressions:
        for m in expressions.models.values():
            lines.append(f"  expressions ({m.label}): mouth share happy {m.happy.shares['mouth']:.1%} vs sad "
                         f"{m.sad.shares['mouth']:.1%}; scored happier when happy in {m.happier_when_happy:.0%} of "
                         "pairs")
    if outputs.get("comparison"):
        lines.append(f"  base models:   {outputs['comparison'].verdict}")
    if outputs.get("quality"):
        lines.append("  AOPC:          " + ", ".join(f"{m.name} {m.aopc_mean:.3f}" for m in outputs["quality"].ranking))
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
