"""The benchmark's targets and its Markdown tables (benchmarks/results.md, for the README)."""

from __future__ import annotations

from emodistill.bench.common import BACKENDS, BUDGET_SECONDS
from emodistill.bench.inference import FRONT_END
from emodistill.bench.machine import describe_cpu
from emodistill.data.frontend import DEFAULT_DETECTOR, DETECT_EVERY
from emodistill.report.tables import markdown_table

# Targets of the issues, for a 2-core CPU: frames/s unless a ratio, MiB, or seconds.
PIPELINE_TARGET = 30.0  # whole pipeline, a 5-member ensemble of the paper preset (real time)
FRONT_END_TARGET = 200.0  # decode, detect or follow, align and crop every face (issue 28)
SINGLE_TARGET = 100.0  # model only, one member of the paper preset
LEVER_TARGET = 1.5  # whole pipeline of the ensemble with the speed levers, against the plain path
MEMBERS_TARGET = 3.0  # whole pipeline of one member against the ensemble's, both plain fp32


def _target(preset: str, members: int, target: float, reached: float, how: str, at_most: bool = False) -> dict:
    met = reached <= target if at_most else reached >= target
    return {"preset": preset, "members": members, "target": target, "reached": reached, "met": met,
            "how": how} | ({"at_most": True} if at_most else {})


def targets(results: dict, preset: str, members: int, budget_mb: float) -> dict:
    """The targets against the fastest setting measured: frames/s of one member and of the
    ensemble's whole pipeline, the front end, the ratios of one member's whole pipeline to the
    ensemble's and of the levers' to the plain path's; and the bench's own memory and time."""
    single = max((r for r in results["model_only"] if r["preset"] == preset and r["members"] == 1),
                 key=lambda r: r["frames_per_s"])
    whole = max((r for r in results["pipeline"] if r["members"] == members),
                key=lambda r: r["frames_per_s"])
    front = next(r for r in results["pipeline"] if r["stage"] == FRONT_END)
    levers, ratio, own = results["levers"], results["members_ratio"], results["resources"]
    whole_how = whole["backend"]
    if levers["levers_frames_per_s"] > whole["frames_per_s"]:
        whole, whole_how = {"frames_per_s": levers["levers_frames_per_s"]}, "torch with the speed levers"
    return {
        "single_member_model_only": _target(
            preset, 1, SINGLE_TARGET, single["frames_per_s"],
            f"{single['backend']}, {single['threads']} thread(s), clip {single['batch']}x{single['length']}"),
        "ensemble_whole_pipeline": _target(preset, members, PIPELINE_TARGET, whole["frames_per_s"], whole_how),
        "front_end": _target("-", 0, FRONT_END_TARGET, front["frames_per_s"],
                             f"{DEFAULT_DETECTOR}, detection every {DETECT_EVERY} frames, followed by O-net in "
                             "between, decoding in a thread"),
        "one_member_vs_ensemble_pipeline": _target(
            preset, members, MEMBERS_TARGET, ratio["ratio"],
            f"{ratio['one_member_frames_per_s']} / {ratio['ensemble_frames_per_s']} frames/s, {ratio['how']}"),
        "ensemble_speed_up_with_levers": _target(
            preset, members, LEVER_TARGET, levers["speedup"],
            ", ".join(k for k, v in levers["levers"].items() if v) + f", {levers['rounds']} interleaved rounds"),
        "bench_peak_memory_mb": _target("-", 0, budget_mb, own["peak_rss_mb"],
                                        "this process and its children together", at_most=True),
        "bench_wall_seconds": _target("-", 0, BUDGET_SECONDS, own["wall_seconds"],
                                      f"on {results['machine']['cores']} cores, load average "
                                      f"{own['load_average_at_end'][0]:.1f} at the end", at_most=True),
    }


def lever_lines(results: dict) -> list[str]:
    """The lever comparison and the training speeds as Markdown."""
    lev = results["levers"]
    active = ", ".join(f"{k}={v}" for k, v in lev["levers"].items())
    lines = [f"Speed levers on this CPU ({active}) against the plain fp32 path, {lev['members']} "
             f"{lev['preset']} members, whole pipeline, measured side by side ({lev['rounds']} interleaved rounds):",
             markdown_table(["path", "frames/s", "speed-up", "largest output difference"],
                            [["plain fp32", lev["plain_frames_per_s"], 1.0, "-"],
                             ["levers", lev["levers_frames_per_s"], lev["speedup"],
                              f"{lev['max_abs_difference']:.1e} (tolerance {lev['tolerance']:g})"],
                             *([[f"levers, members sharing a frozen backbone below their last "
                                 f"{lev['frozen_front']['tail_blocks']} blocks (the demo's)",
                                 lev["frozen_front"]["levers_frames_per_s"], lev["frozen_front"]["speedup"],
                                 f"{lev['frozen_front']['max_abs_difference']:.1e} (against its own plain path)"]]
                               if "frozen_front" in lev else [])])]
    lines += ["Training steps of one member (forward, loss, backward, Adam), side by side in one fresh process "
              f"(--clips-per-task {results['training'][0]['clips_per_task']}):",
              markdown_table(["preset", "case", "batch BxL", "clips/s", "frames/s", "vs fp32"],
                             [[r["preset"], r["case"], r["clips"], r["clips_per_s"], r["frames_per_s"],
                               r["vs_fp32"]] for r in results["training"]])]
    return lines


def training_memory_lines(memory: dict) -> list[str]:
    """The table of what `train` will take, and how well extrapolation did where it could be checked."""
    rows = [[f"{r['preset']} ({r['input_size']}x{r['input_size']})",
             f"{r['clips_per_task']}{' (default)' if r['default'] else ''}", r["batch"],
             f"{r['peak_rss_mb'] / 1024:.2f}", "-" if r["seconds_per_step"] is None else r["seconds_per_step"],
             r["how"]] for r in memory["rows"]]
    lines = [f"What `train` will take: peak resident memory of one member's training, per preset and "
             f"--clips-per-task (a batch holds that many {memory['clip_length']}-frame clips of each of the 3 "
             f"tasks; {memory['note']}). Cases predicted over the bench's budget of "
             f"{memory['budget_mb'] / 1024:.0f} GiB are extrapolated, not run:",
             markdown_table(["preset", "--clips-per-task", "batch BxL", "peak RSS GiB", "s per step", "how"], rows)]
    checks = [f"{c['preset']} at {c['clips_per_task']}: {c['predicted_mb'] / 1024:.2f} GiB predicted from "
              f"{' and '.join(map(str, c['from']))}, {c['measured_mb'] / 1024:.2f} measured "
              f"({c['error_percent']:+.1f}%)" for c in memory["extrapolation_check"]]
    if checks:
        lines.append("The linear extrapolation checked where the largest batch was measured too: "
                     + "; ".join(checks) + ".")
    return lines


def resources_line(results: dict) -> str:
    own = results["resources"]
    return (f"This benchmark's own cost: peak resident memory {own['peak_rss_mb'] / 1024:.2f} GiB (this process "
            f"and its children together: sampled {own['sampled_tree_peak_mb'] / 1024:.2f} GiB; this process alone "
            f"{own['self_peak_mb'] / 1024:.2f}; the largest child {own['largest_child_peak_mb'] / 1024:.2f}), wall "
            f"time {own['wall_seconds']:.0f} s on {results['machine']['cores']} cores, 1-minute load average "
            f"{own['load_average_at_start'][0]:.1f} at the start and {own['load_average_at_end'][0]:.1f} at the end.")


def markdown(results: dict) -> str:
    """The README tables: model-only, whole pipeline, levers, training, memory, targets."""
    machine = results["machine"]
    peaks = ", ".join(f"{p['gmacs_per_s']:g} on {p['threads']} thread(s)" for p in results["matmul_peak"])
    by_key = {(r["preset"], r["threads"], r["members"], r["batch"], r["length"], r["backend"]): r
              for r in results["model_only"]}
    model_rows = []
    for setting in dict.fromkeys(k[:5] for k in by_key):
        cells = [by_key[(*setting, b)] for b in BACKENDS]
        preset, threads, members, B, L = setting
        size = cells[0]["input_size"]
        model_rows.append([f"{preset} ({size}x{size})", threads, members, f"{B}x{L}",
                           *(c["frames_per_s"] for c in cells),
                           *(f"{100 * c['peak_ratio']:.0f}%" for c in cells)])
    pipeline_rows = [[r["stage"], r["members"] or "-", r["backend"], r["frames_per_s"],
                      r.get("vs_dlib_every_frame", "-")] for r in results["pipeline"]]
    ratio = results["members_ratio"]
    mem = results["memory"]
    target_rows = [[name.replace("_", " "), f"{'<=' if t.get('at_most') else '>='} {t['target']:g}", t["reached"],
                    t["how"], "yes" if t["met"] else "no"] for name, t in results["targets"].items()]
    load = "/".join(f"{x:.1f}" for x in machine["load_average_at_start"][:1] + machine["load_average_at_end"][:1])
    parts = [
        f"Measured on {describe_cpu(machine)}, {machine['cores']} cores, {machine.get('memory_gib')} GiB "
        f"({', '.join(machine['vector'])}), PyTorch {machine['torch']}, ONNX Runtime "
        f"{machine['onnxruntime']}; 1-minute load average at start/end {load}. Matrix-multiply "
        f"peak (fp32) in G multiply-adds/s: {peaks}; the % columns divide the achieved "
        "multiply-adds/s by the peak of the same thread count. Model only, frames/s, median of "
        f"{results['settings']['repeats']} rounds:",
        markdown_table(["model", "threads", "members", "clip BxL", "PyTorch", "ONNX Runtime",
                        "PyTorch % peak", "ONNX % peak"], model_rows),
        f"Front end and whole pipeline on a {results['pipeline'][0]['frames']}-frame 640x480 video "
        "(decode, detect or follow the faces, align, crop; then predict and write CSV), frames/s, "
        "measured in the same run; the PyTorch pipelines side by side in interleaved rounds, ONNX Runtime once:",
        markdown_table(["stage", "members", "backend", "frames/s", "front end vs dlib on every frame"],
                       pipeline_rows),
        f"One member's whole pipeline against {ratio['members']} members' ({ratio['how']}): "
        f"{ratio['one_member_frames_per_s']} / {ratio['ensemble_frames_per_s']} frames/s = {ratio['ratio']}x.",
        *lever_lines(results),
        *training_memory_lines(results["training_memory"]),
        f"Peak memory of prediction, {mem['preset']}, clip {mem['clip']} (MiB, fresh process per case):",
        markdown_table(["case", "peak RSS MiB"], [[name, value] for name, value in mem["peak_rss_mb"].items()]),
        resources_line(results),
        "Targets (frames/s; the speed-ups are ratios, memory in MiB, time in seconds):",
        markdown_table(["target", "wanted", "reached", "with", "met"], target_rows),
    ]
    return "\n\n".join(parts) + "\n"
