"""The page: Generate, Compare and History tabs over `app.generation` and `app.models`.

gradio is imported here only, and this module only by `opensora app` (lazily), so the
rest of the command line never pays for it. Nothing in the page reaches the internet:
analytics are off, the theme's fonts are gradio's bundled ones, share links are opt-in.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gradio as gr

from opensora_core.app.generation import (
    MASK_PRESETS,
    Cancelled,
    GenerateForm,
    Result,
    history,
    plan,
    run_plan,
)
from opensora_core.app.models import ModelStore
from opensora_core.config import RESOLUTION_AREAS
from opensora_core.tracking.versions import VERSION_SCORES, download_preview

ASPECT_RATIOS = ["9:16", "16:9", "1:1", "3:4", "4:3", "2:3", "3:2", "1:2", "2:1"]  # height:width, as the CLI
SAMPLERS = ["auto", "iddpm", "dpm-solver", "rflow"]
HISTORY_COLUMNS = ["run", "created", "prompt", "model", "seed", "size", "frames", "steps"]
VERSION_COLUMNS = ["version", "champion", "aliases", *VERSION_SCORES, "decision"]


@dataclass
class AppState:
    models: ModelStore
    out_root: Path
    profiles: list[str]
    default_model: str | None = None  # a local folder preselected when the registry is empty
    default_steps: int = 30
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    cancels: dict[str, threading.Event] = field(default_factory=dict)


def _profiles() -> list[str]:
    from opensora_core.config.loading import config_dir

    names = sorted(p.stem for p in config_dir("profiles").glob("*.yaml"))
    return names or ["embedded"]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _generate(state: AppState, form: GenerateForm, session: str, progress) -> Result:
    """Plan, load (once per version), sample; every user mistake as gr.Error, shown in
    the page while the server goes on serving."""
    try:
        planned = plan(form)
        progress(0, desc="loading the model")
        source = state.models.resolve(form.model, form.profile)
        cancel = state.cancels[session] = threading.Event()
        with state.run_lock:  # one run at a time, whatever the queue lets through
            generator, provenance = state.models.load(source)
            return run_plan(generator, provenance, planned, state.out_root, form, source.for_command,
                            on_step=lambda done, total: progress((done, total), desc="denoising", unit="steps"),
                            cancel=cancel)
    except Cancelled:
        raise gr.Error("generation cancelled", title="Cancelled") from None
    except (ValueError, LookupError, FileNotFoundError, OSError) as err:
        raise gr.Error(str(err), title="Cannot generate") from None
    finally:
        state.cancels.pop(session, None)


def _result_outputs(result: Result):
    info = (f"**seed** {result.seed} · **loops** {result.loops} · {result.seconds:.1f} s  \n"
            f"The same video from the command line:\n\n```\n{result.command}\n```")
    return str(result.video), [str(result.video), str(result.sidecar)], info


def _form(prompt, model, local_model, profile, size_mode, resolution, aspect_ratio, height, width, length,
          length_unit, window, condition, fps, frame_interval, sampler, steps, cfg_scale, seed, random_seed,
          references, mask, mask_strategy) -> GenerateForm:
    files = [getattr(f, "name", f) for f in (references or [])]
    return GenerateForm(
        prompt=prompt or "", model=(local_model or "").strip() or (model or ""), profile=profile,
        resolution=resolution if size_mode == "resolution" else None, aspect_ratio=aspect_ratio or "9:16",
        height=height, width=width, length=length, length_unit=length_unit, window=window,
        condition_frame_length=condition, fps=fps, frame_interval=frame_interval, sampler=sampler, steps=steps,
        cfg_scale=cfg_scale, seed=None if random_seed else seed, references=[str(f) for f in files], mask=mask,
        mask_strategy=mask_strategy or "")


def _history_rows(state: AppState) -> tuple[list[list], list[str]]:
    entries = history(state.out_root)
    rows = []
    for e in entries:
        f = e.form
        size = f"{f.get('resolution')} {f.get('aspect_ratio')}" if f.get("resolution") else \
            f"{f.get('height')}x{f.get('width')}"
        rows.append([e.folder.name, e.created, f.get("prompt", ""), f.get("model", ""), f.get("seed"), size,
                     f"{f.get('length')} {f.get('length_unit')}", f.get("steps")])
    return rows, [e.folder.name for e in entries]


def _versions_view(state: AppState):
    versions = state.models.versions()
    rows = [[f"v{v.version}", "★" if v.is_champion else "", ", ".join(v.aliases),
             *(None if k not in v.scores else round(v.scores[k], 4) for k in VERSION_SCORES), v.decision or ""]
            for v in versions]
    gallery = []
    for v in versions:
        if v.eval_run_id is None:
            continue
        preview = download_preview(state.models.tracking_uri, v.eval_run_id,
                                   state.models.cache_dir / "previews" / f"{v.eval_run_id}.gif")
        if preview is not None:
            scores = ", ".join(f"{k} {s:.2f}" for k, s in v.scores.items())
            gallery.append((str(preview), f"{'★ champion ' if v.is_champion else ''}v{v.version}: {scores}"))
    note = "" if versions else ("No registered versions: run `make demo` (or `opensora eval-samples --register`) "
                                "to train and register one.")
    return rows, gallery, note


def build(state: AppState) -> gr.Blocks:
    """The Blocks app; `launch` serves it."""
    choices, champion = state.models.choices()
    default_model = champion
    local_default = state.default_model if champion is None else None
    with gr.Blocks(title="Open-Sora MLOps: generate and compare", analytics_enabled=False) as demo:
        gr.Markdown("# Open-Sora MLOps\nGenerate videos from any trained STDiT-2 version, compare the "
                    "registered versions, re-run what you made.")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"), gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                        placeholder="a red square moving left on a blue background")
                    with gr.Row():
                        model = gr.Dropdown(choices=choices, value=default_model, label="Model (MLflow registry)",
                                            elem_id="model", allow_custom_value=True)
                        local_model = gr.Textbox(label="or a local export/checkpoint folder",
                                                 value=local_default or "", elem_id="local-model")
                        profile = gr.Dropdown(choices=state.profiles, value="embedded", label="Profile")
                    with gr.Row():
                        size_mode = gr.Radio(["resolution", "pixels"], value="pixels", label="Size by")
                        resolution = gr.Dropdown(list(RESOLUTION_AREAS), value="240p", label="Resolution")
                        aspect_ratio = gr.Dropdown(ASPECT_RATIOS, value="9:16", allow_custom_value=True,
                                                   label="Aspect ratio (height:width)")
                        height = gr.Number(64, label="Height", precision=0)
                        width = gr.Number(64, label="Width", precision=0)
                    with gr.Row():
                        length = gr.Number(16, label="Length", elem_id="length")
                        length_unit = gr.Radio(["frames", "seconds"], value="frames", label="in")
                        window = gr.Number(16, label="Frames per loop", precision=0)
                        condition = gr.Number(4, label="Frames each loop continues from", precision=0)
                        fps = gr.Number(24, label="fps")
                        frame_interval = gr.Number(3, label="Frame interval", precision=0)
                    with gr.Row():
                        sampler = gr.Dropdown(SAMPLERS, value="auto", label="Sampler")
                        steps = gr.Slider(1, 200, value=state.default_steps, step=1, label="Steps", elem_id="steps")
                        cfg_scale = gr.Slider(0, 20, value=7.0, step=0.5, label="Guidance (CFG scale)")
                        seed = gr.Number(42, label="Seed", precision=0)
                        random_seed = gr.Checkbox(False, label="Random seed")
                    with gr.Row():
                        references = gr.File(label="Reference image or video (two for connect)",
                                             file_count="multiple", type="filepath")
                        mask = gr.Dropdown(list(MASK_PRESETS), value="none", label="Mask strategy")
                        mask_strategy = gr.Textbox(label="Raw mask strategy (with raw)",
                                                   placeholder="loop,ref_id,ref_start,target_start,length,"
                                                               "edit_ratio;...")
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
                with gr.Column(scale=2):
                    video = gr.Video(label="Video", interactive=False, elem_id="result-video", height=360)
                    files = gr.File(label="Download (video and JSON sidecar)", interactive=False)
                    info = gr.Markdown(elem_id="result-info")
            with gr.Tab("Compare", id="compare"):
                refresh = gr.Button("Refresh from the registry")
                versions_note = gr.Markdown()
                versions_table = gr.Dataframe(headers=VERSION_COLUMNS, interactive=False, elem_id="versions",
                                              label="Registered versions and their evaluation scores")
                previews = gr.Gallery(label="Evaluation samples (seed 0, every prompt) per version", columns=2,
                                      elem_id="previews", height="auto")
                gr.Markdown("### Two versions, one prompt and seed\nThe other settings are the Generate tab's.")
                with gr.Row():
                    version_a = gr.Dropdown(choices=choices, value=default_model, label="Version A", allow_custom_value=True)
                    version_b = gr.Dropdown(choices=choices, value=next(
                        (value for _, value in choices if value != default_model), default_model),
                                            label="Version B", allow_custom_value=True)
                with gr.Row():
                    compare_prompt = gr.Textbox(label="Prompt", scale=3)
                    compare_seed = gr.Number(0, label="Seed", precision=0)
                    compare_button = gr.Button("Generate both", variant="primary")
                with gr.Row():
                    video_a = gr.Video(label="A", interactive=False, height=320)
                    video_b = gr.Video(label="B", interactive=False, height=320)
            with gr.Tab("History", id="history"):
                history_table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="history",
                                             label="What this app generated (newest first): click a row to "
                                                   "re-run it")
                with gr.Row():
                    history_choice = gr.Dropdown(label="Run", choices=[], elem_id="history-choice", allow_custom_value=True)
                    rerun = gr.Button("Re-run", variant="primary", elem_id="rerun-button")
                rerun_video = gr.Video(label="Re-run", interactive=False, elem_id="rerun-video", height=360)
                rerun_info = gr.Markdown()

        form_inputs = [prompt, model, local_model, profile, size_mode, resolution, aspect_ratio, height, width,
                       length, length_unit, window, condition, fps, frame_interval, sampler, steps, cfg_scale, seed,
                       random_seed, references, mask, mask_strategy]

        # gradio hands the request and progress only to parameters before *values.
        def on_generate(request: gr.Request, progress=gr.Progress(), *values):  # noqa: B008 - gradio's idiom
            return _result_outputs(_generate(state, _form(*values), _session(request), progress))

        def on_cancel(request: gr.Request):
            event = state.cancels.get(_session(request))
            if event is not None:
                event.set()
            return gr.Info("cancelling at the next step") if event is not None else None

        def on_history():
            rows, names = _history_rows(state)
            return rows, gr.update(choices=names, value=names[0] if names else None)

        def on_rerun(name, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            entry = next((e for e in history(state.out_root) if e.folder.name == name), None)
            if entry is None:
                raise gr.Error(f"no run {name!r} in the history", title="Cannot re-run")
            result = _generate(state, GenerateForm.from_dict(entry.form), _session(request), progress)
            return str(result.video), _result_outputs(result)[2]

        def on_compare(version_a, version_b, compare_prompt, compare_seed, request: gr.Request,
                       progress=gr.Progress(), *values):  # noqa: B008
            base = _form(*values)
            videos = []
            for version in (version_a, version_b):
                if not version:
                    raise gr.Error("choose two versions", title="Cannot compare")
                form = GenerateForm(**{**asdict(base), "model": version, "prompt": compare_prompt,
                                       "seed": compare_seed, "references": [], "mask": "none"})
                videos.append(str(_generate(state, form, _session(request), progress).video))
            return videos[0], videos[1]

        def on_versions():
            rows, gallery, note = _versions_view(state)
            return rows, gallery, note

        def on_choices():
            # Versions registered (or deleted) since the page was built.
            pairs, _ = state.models.choices()
            return (gr.update(choices=pairs), gr.update(choices=pairs), gr.update(choices=pairs))

        generation = generate.click(on_generate, form_inputs, [video, files, info], api_name="generate",
                                    concurrency_id="generation", concurrency_limit=1)
        generation.then(on_history, None, [history_table, history_choice], api_visibility="private")
        cancel.click(on_cancel, None, None, cancels=[generation], queue=False, api_name="cancel")
        rerun.click(on_rerun, [history_choice], [rerun_video, rerun_info], api_name="rerun",
                    concurrency_id="generation", concurrency_limit=1).then(
            on_history, None, [history_table, history_choice], api_visibility="private")

        def on_pick(event: gr.SelectData):
            return event.row_value[0]  # the run column

        history_table.select(on_pick, None, history_choice, api_visibility="private").then(
            on_rerun, [history_choice], [rerun_video, rerun_info], api_visibility="private",
            concurrency_id="generation", concurrency_limit=1)
        compare_button.click(on_compare, [version_a, version_b, compare_prompt, compare_seed, *form_inputs],
                             [video_a, video_b], api_name="compare_two", concurrency_id="generation",
                             concurrency_limit=1)
        refresh.click(on_versions, None, [versions_table, previews, versions_note], api_name="versions")
        demo.load(on_versions, None, [versions_table, previews, versions_note], api_visibility="private")
        demo.load(on_history, None, [history_table, history_choice], api_name="history")
        demo.load(on_choices, None, [model, version_a, version_b], api_visibility="private")
        refresh.click(on_choices, None, [model, version_a, version_b], api_visibility="private")
    return demo


def launch(state: AppState, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> gr.Blocks:
    """Serve the app on `host:port` (one generation at a time, the rest queued with their
    position shown); with `block` False it returns once serving (tests)."""
    state.out_root.mkdir(parents=True, exist_ok=True)
    state.models.cache_dir.mkdir(parents=True, exist_ok=True)
    demo = build(state)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, show_error=True,
                quiet=not block, allowed_paths=[str(state.out_root.resolve()), str(state.models.cache_dir.resolve())],
                ssr_mode=False, mcp_server=False, pwa=False, theme=gr.themes.Default(), inbrowser=False)
    return demo
