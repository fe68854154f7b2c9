"""The whole study from one config: base → SFT → eval → RL starts → RL → eval → spectrum → edits → eval → report.

Every stage asks the run's results store (or its checkpoint folders) what is already done and does only the
rest, so a killed study finishes when the same command runs again. `RUN/study.json` records the config
that made the run; a run folder made by a different config is refused rather than mixed, unless nothing was
made in it yet (a first stage that failed): then the corrected config takes it over. What a config cannot do
is found before the folder is claimed; a claimed folder is locked (`rlheal.lock`), cleared of the
temporaries of killed writes, and its checkpoints are verified against their manifests (`rlheal.integrity`).
Each finished stage is reported to `on_stage_done(name, seconds, detail)` (the command line prints it).

Under a launcher (`accelerate launch`, `torchrun`) every process runs the study: training and evaluation are
shared (`rlheal.distributed`, the trainers), spectral analysis is split by layers, and what one process does
alone (claiming and checking the folder, the base link, alignment, edits, the report, the log) rank 0 does
while the others wait; rank 0 alone writes, and alone reports finished stages. Every decision read from the
store or the folders is rank 0's view, so the processes never take different paths.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlheal.atomic import write_text
from rlheal.config import StudyConfig
from rlheal.distributed import main_view, on_main
from rlheal.provenance import environment
from rlheal.report.findings import selection_success
from rlheal.samples import SampleLog
from rlheal.store import Store
from rlheal.tracking import Trackers

STUDY_FILE = "study.json"
LOG_FILE = "study.log"
STAGES = ("base", "sft", "eval-sft", "rl", "eval-rl", "spectrum", "edits", "eval-edits", "report")
log = logging.getLogger("rlheal.study")


class StudyError(RuntimeError):
    """A study that cannot run in this folder; the message says why and what to do."""


class StudyConfigError(StudyError):
    """A config that cannot run anywhere (found before any folder is touched); the message names the field."""


@dataclass(frozen=True)
class Run:
    """A run folder and what lives where in it."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def rl(self) -> Path:
        return self.root / "rl"

    @property
    def edits(self) -> Path:
        return self.root / "edits"


def check_before_claiming(cfg: StudyConfig) -> None:
    """Raise StudyConfigError for what `cfg` cannot do, before any run folder is touched: a model that is neither a
    built-in base nor a checkpoint folder, an SFT schedule that does not fit its steps, RL starts it does not save."""
    from rlheal.models.builtin import RECIPES
    from rlheal.models.checkpoint import CheckpointError, check_checkpoint
    from rlheal.train.sft import SFTConfigError, bf16_available

    if cfg.model.startswith("builtin"):
        if cfg.model not in RECIPES:
            raise StudyConfigError(f"model: {cfg.model!r} is not a built-in base; valid: {', '.join(RECIPES)}")
    else:
        try:
            check_checkpoint(Path(cfg.model).expanduser())
        except CheckpointError as exc:
            raise StudyConfigError(f"model: {exc}") from None
    if cfg.sft.bf16 and not bf16_available():
        raise StudyConfigError("sft.bf16: this machine has no GPU that computes in bfloat16; set sft.bf16=false "
                         "(--set sft.bf16=false) or run on such a GPU")
    try:
        saved = cfg.sft.checkpoint_steps()
    except SFTConfigError as exc:
        raise StudyConfigError(f"sft.{exc}") from None
    if isinstance(cfg.rl.starts, list) and (missing := [s for s in cfg.rl.starts if s not in saved]):
        raise StudyConfigError(f"rl.starts names SFT steps {missing} that the SFT schedule does not save; it saves "
                         f"steps {saved}: change rl.starts or sft.schedule")


def made_nothing(root: Path) -> bool:
    """Whether run folder `root` holds no results yet: no checkpoint folders and no stored rows."""
    from rlheal.store import STORE_FILENAME

    if any((root / stage).is_dir() and any((root / stage).iterdir()) for stage in ("sft", "rl", "edits")):
        return False
    if not (root / STORE_FILENAME).exists():
        return True
    with Store(root, readonly=True) as store:
        return store.is_empty()


def claim_run_folder(root: Path, cfg: StudyConfig) -> Run:
    """Create or reopen RUN for `cfg`; refuse a folder made by another config, unless it holds no results yet."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / STUDY_FILE
    if marker.exists():
        try:
            made_by = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise StudyError(f"{marker} is corrupt ({exc}); move the run folder aside and start again") from exc
        if not isinstance(made_by, dict):
            raise StudyError(f"{marker} is not a study record; move the run folder aside and start again")
        if made_by.get("fingerprint") != cfg.fingerprint() and made_nothing(root):
            log.info("%s was claimed by config %s but holds no results: config %s takes it over", root,
                     made_by.get("fingerprint"), cfg.fingerprint())
            marker.unlink()
            return claim_run_folder(root, cfg)
        if made_by.get("fingerprint") != cfg.fingerprint():
            raise StudyError(
                f"{root} was made by a different config (fingerprint {made_by.get('fingerprint')}, this one "
                f"is {cfg.fingerprint()}); its results would mix with this config's. Use another --out, or "
                f"rerun with the config saved in {marker}.")
    else:
        write_text(marker, json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.model_dump(mode="json"),
                                       "versions": environment()}, indent=2))
    return Run(root)


def choose_rl_starts(sft_rows: Sequence[dict[str, Any]], n: int) -> list[int]:
    """`auto` RL starts for one task: the OOD peak (on the selection half of the problems), the last step, and
    steps whose ID success is nearest to evenly spaced levels between the lowest and highest ID success (step 0,
    the base, is never chosen, nor a checkpoint none of whose ID answers parse, where RL has no learning signal,
    unless all are such).

    `sft_rows` are the task's SFT eval rows (both splits). Returns ascending steps, at most max(n, 2).
    """
    ood = {r["step"]: selection_success(r) for r in sft_rows if r["split"] == "ood" and r["step"] > 0}
    idr = {r["step"]: r["success_rate"] for r in sft_rows if r["split"] == "id" and r["step"] > 0}
    no_format = {r["step"] for r in sft_rows if r["split"] == "id" and r.get("format_error_rate") == 1.0}
    steps = sorted((set(ood) & set(idr)) - no_format) or sorted(set(ood) & set(idr))
    if not steps:
        return []
    peak = max(steps, key=lambda s: (ood[s], -s))
    chosen = {peak, steps[-1]}
    lo, hi = min(idr.values()), max(idr.values())
    for i in range(n):
        level = lo + (hi - lo) * i / max(1, n - 1)
        if len(chosen) >= max(n, 2):
            break
        candidates = [s for s in steps if s not in chosen]
        if candidates:
            chosen.add(min(candidates, key=lambda s: (abs(idr[s] - level), s)))
    return sorted(chosen)


def decline_start(sft_rows: Sequence[dict[str, Any]], points: float) -> int | None:
    """The first SFT step after the OOD peak whose OOD success is at least `points` percentage points below
    it, both on the selection half of the problems (the peak counts the base, step 0; ties go to the earliest
    step), or None when OOD never falls that far. `sft_rows` are one task's SFT eval rows (both splits)."""
    ood = {r["step"]: selection_success(r) for r in sft_rows if r["split"] == "ood"}
    if not ood:
        return None
    peak = max(ood, key=lambda s: (ood[s], -s))
    fallen = sorted(s for s in ood if s > peak and 100 * (ood[peak] - ood[s]) >= points - 1e-9)
    return fallen[0] if fallen else None


WINDOW_ROLES = ("before-peak", "peak", "decline", "mid-decline", "end")


def window_roles(sft_rows: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """The SFT step of each `window` role of one task, chosen on the selection half of the OOD problems:
    `before-peak` (the checkpoint before the OOD peak), `peak`, `decline` (the first checkpoint 5 points below
    the peak), `mid-decline` (the first at or below the midpoint of peak and end) and `end` (the last); None for a
    role no checkpoint fills. `sft_rows` are the task's SFT eval rows (both splits)."""
    ood = {r["step"]: selection_success(r) for r in sft_rows if r["split"] == "ood"}
    if not ood:
        return dict.fromkeys(WINDOW_ROLES)
    steps = sorted(ood)
    peak = max(steps, key=lambda s: (ood[s], -s))
    middle = (ood[peak] + ood[steps[-1]]) / 2
    return {"before-peak": steps[steps.index(peak) - 1] if steps.index(peak) > 0 else None, "peak": peak,
            "decline": decline_start(sft_rows, 5.0),
            "mid-decline": next((s for s in steps if s > peak and ood[s] <= middle + 1e-12), None), "end": steps[-1]}


def window_starts(sft_rows: Sequence[dict[str, Any]]) -> list[int]:
    """The `window` RL starts of one task: the steps of its `window_roles`, ascending, without repeats, never
    the base (step 0)."""
    return sorted({s for s in window_roles(sft_rows).values() if s})


def _setup_logging(run: Run) -> logging.Handler:
    handler = logging.FileHandler(run.root / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rlheal")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


StageDone = Callable[[str, float, str], None]


class StageNote:
    """What a stage says of itself when it is done (`detail`, e.g. `9 checkpoints, steps 0-60`)."""

    detail: str = ""


class Study:
    """Runs the stages of `cfg` in `run`; `on_stage(name)` is called as each stage starts (tests stop here),
    `on_stage_done(name, seconds, detail)` when it ends. `samples` writes every played episode to
    `RUN/samples/`; `trackers` receives the evaluation and RL-update rows (and SFT reports to the same)."""

    def __init__(self, cfg: StudyConfig, out: Path, progress: bool = True,
                 on_stage: Callable[[str], None] | None = None, on_stage_done: StageDone | None = None,
                 samples: bool = False, trackers: Trackers | None = None) -> None:
        from rlheal.distributed import ensure_process_group

        self.cfg = cfg
        self.run = Run(Path(on_main(lambda: str(claim_run_folder(Path(out), cfg).root))))
        self.main = ensure_process_group()[0] == 0
        self.progress = progress and self.main
        self.on_stage = on_stage or (lambda name: None)
        self.on_stage_done = on_stage_done if on_stage_done and self.main else (lambda name, seconds, detail: None)
        self.samples = samples
        self.trackers = trackers if trackers is not None and self.main else Trackers([], self.run.root)
        self.store = Store(self.run.root)

    # --- stages ----------------------------------------------------------------------------------
    def base(self) -> Path:
        from rlheal.models.checkpoint import weights_sha256
        from rlheal.train.sft import resolve_model

        folder = resolve_model(self.cfg.model, progress=self.progress)
        if self.cfg.model.startswith("builtin"):
            log.info("base %s, weights sha256 %s", folder, weights_sha256(folder))
        link = self.run.base
        if not link.exists():
            tmp = link.with_name(".base.link")
            tmp.unlink(missing_ok=True)
            os.symlink(Path(folder).resolve(), tmp, target_is_directory=True)
            os.replace(tmp, link)
        return folder

    def sft(self, base: Path) -> list[Path]:
        from rlheal.train.sft import run_sft

        cfg = self.cfg.sft.model_copy(update={"model": str(base)})
        return run_sft(cfg, self.run.root, self.store, progress=self.progress, trackers=self.trackers)

    def evaluate(self, checkpoints: Sequence[Path]) -> tuple[int, int]:
        """Evaluate `checkpoints` on the study's eval sets; returns (rows in all, rows computed now)."""
        from rlheal.distributed import evaluate_launched

        e, new = self.cfg.eval, []
        rows = evaluate_launched(self.store, list(checkpoints), self.cfg.tasks, self.cfg.splits, episodes=e.episodes,
                        seed=e.seed, profile=self.cfg.profile, batch_size=e.batch_size, max_attempts=e.max_attempts,
                        decoding=self._decoding(), show_progress=self.progress, samples=self._samples("eval"),
                        on_row=lambda row: (new.append(row), self.trackers.log_eval_row(row)))
        return len(rows), len(new)

    def _samples(self, kind: str) -> SampleLog | None:
        return SampleLog(self.run.root, kind) if self.samples else None

    def eval_set(self, task: str) -> str:
        """The id of the study's eval set for `task` (other rows in the store, e.g. from `rlheal rl`, are ignored)."""
        from rlheal.evaluate import task_eval_set
        from rlheal.tasks import get_task

        e = self.cfg.eval
        return task_eval_set(get_task(task, self.cfg.profile), seed=e.seed, episodes=e.episodes,
                             max_attempts=e.max_attempts, decoding=self._decoding())

    def _decoding(self):
        from rlheal.rollout import Decoding

        e = self.cfg.eval
        return Decoding(temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=e.seed)

    def rl_starts(self, task: str, sft_rows: Sequence[dict[str, Any]], sft_folders: dict[int, Path]) -> list[Path]:
        rl = self.cfg.rl
        rows = [r for r in sft_rows if r["task"] == task]
        if rl.starts == "auto":
            steps = choose_rl_starts(rows, rl.n_starts)
        elif rl.starts == "window":
            steps = window_starts(rows)
        elif rl.decline_points is not None:  # the decline's first checkpoint and the over-trained end
            first = decline_start(rows, rl.decline_points)
            if first is None:
                log.warning("%s: no SFT checkpoint's OOD success fell %g points below the peak; RL starts only "
                            "from the last checkpoint", task, rl.decline_points)
            steps = sorted({first, max(r["step"] for r in rows)} - {None, 0}) if rows else []
        else:
            missing = [s for s in rl.starts if s not in sft_folders]
            if missing:
                raise StudyError(f"rl.starts names SFT steps {missing} that the SFT schedule did not save; "
                                 f"saved steps: {sorted(sft_folders)}")
            steps = list(rl.starts)
        return [sft_folders[s] for s in steps]

    def rl(self, task: str, starts: Sequence[Path]) -> list[Path]:
        """RL from each start (skipping finished ones), and its shuffled-reward control arm when the config
        asks for one, then the evaluation of every RL checkpoint."""
        from rlheal.models.checkpoint import read_manifest
        from rlheal.train.ppo import rl_checkpoints
        from rlheal.train.sweep import make_config, rl_folder, run_sweep

        if not starts:
            return []
        e, algo = self.cfg.eval, self.cfg.rl.algo
        folders = []
        for overrides in self.cfg.rl.arms(task):
            run_sweep(self.run.sft, self.run.root, algo=algo, steps=[read_manifest(s).step for s in starts],
                      overrides=overrides, eval_episodes=e.episodes, eval_seed=e.seed,
                      eval_decoding=self._decoding(), eval_max_attempts=e.max_attempts, show_progress=self.progress,
                      samples=self._samples("rl"), eval_samples=self._samples("eval"), trackers=self.trackers)
            arm = make_config(algo, overrides).arm
            folders += [c for s in starts for c in rl_checkpoints(rl_folder(self.run.root, s, arm))]
        return folders

    def spectrum(self, targets: Sequence[Path], references: dict[str, Path]) -> int:
        """Spectral rows of each (reference, target) pair the store lacks, the layers split across processes."""
        from rlheal.distributed import distributed_spectrum
        from rlheal.spectral.metrics import SPECTRAL

        sp = self.cfg.spectral
        unique = {Path(ref).resolve(): ref for ref in references.values()}  # the OOD peak may be the base
        pairs = main_view([(str(ref), str(t)) for ref in unique.values() for t in targets
                           if Path(ref).resolve() != Path(t).resolve() and not self.store.has(
                               SPECTRAL, target=str(Path(t).resolve()), reference=str(Path(ref).resolve()))])
        if not pairs:
            return 0
        rows, _ = distributed_spectrum([tuple(p) for p in pairs], ks=sp.k, modules=sp.modules, store=self.store,
                                       progress=self.progress)
        return len(rows)

    def align(self, rl_folders: Sequence[Path], peak: Path) -> int:
        """`alignment` rows of every RL checkpoint: its change from its SFT start against the direction from
        that start back to the OOD peak (starts at the peak itself have no direction back)."""
        from rlheal.models.checkpoint import read_manifest
        from rlheal.spectral.alignment import ALIGNMENT, run_alignment

        peak = Path(peak).resolve()
        triples = [(Path(start).resolve(), Path(c).resolve(), peak) for c in rl_folders
                   if (start := read_manifest(c).parent) and Path(start).resolve() != peak
                   and not self.store.has(ALIGNMENT, target=str(Path(c).resolve()), reference=str(peak))]
        if not triples:
            return 0
        rows = run_alignment(triples, self.cfg.spectral.modules)
        self.store.put(ALIGNMENT, rows)
        return len(rows)

    def edits(self, reference: Path, target: Path) -> list[Path]:
        from rlheal.spectral.edit import edit_checkpoint
        from rlheal.spectral.weights import CheckpointWeights

        ed = self.cfg.edits
        made = []
        for mode in ed.modes:
            if mode == "layers":
                n_layers = 1 + max(info.layer for info in CheckpointWeights(target).select() if info.layer is not None)
                keep = max(1, round(ed.layers * n_layers))
                folder = self.run.edits / f"layers-first{keep}"
                kwargs: dict[str, Any] = {"layers": set(range(keep))}
            else:
                folder = self.run.edits / (f"{mode}-top{ed.top:g}" + (f"-tail{ed.tail:g}" if ed.tail else ""))
                kwargs = {"top": ed.top, "tail": ed.tail, "modules": ",".join(self.cfg.spectral.modules)}
            if not (folder / "rlheal_manifest.json").exists():
                edit_checkpoint(reference, target, folder, mode, progress=self.progress, overwrite=True, **kwargs)
            made.append(folder)
        return made

    # --- the whole study --------------------------------------------------------------------------------
    def run_all(self) -> Path:
        from rlheal.evaluate import EVALS, ood_peak
        from rlheal.models.checkpoint import find_checkpoints, read_manifest
        from rlheal.report import build_report

        started = time.perf_counter()
        log.info("study in %s, config fingerprint %s", self.run.root, self.cfg.fingerprint())

        with self._stage("base") as note:
            base = Path(on_main(lambda: str(self.base())))
            note.detail = self.cfg.model
        with self._stage("sft") as note:
            made = self.sft(base)
            found = main_view([str(p) for p in [*find_checkpoints([self.run.sft]), *made]])
            sft_folders = {read_manifest(p).step: p for p in map(Path, found)}  # made last: they win
            note.detail = f"{len(sft_folders)} checkpoints, steps {min(sft_folders)}–{max(sft_folders)}"
        with self._stage("eval-sft") as note:
            note.detail = _evaluated(*self.evaluate(sorted(sft_folders.values(), key=lambda p: read_manifest(p).step)))
        sft_rows = main_view([r for t in self.cfg.tasks for r in self.store.rows(EVALS, stage="sft", task=t,
                                                                                 eval_set=self.eval_set(t))])

        rl_folders: list[Path] = []
        with self._stage("rl") as note:
            started_from = []
            for task in self.cfg.tasks:
                starts = self.rl_starts(task, sft_rows, sft_folders)
                steps = [read_manifest(s).step for s in starts]
                log.info("RL starts for %s: %s", task, steps)
                started_from += steps
                rl_folders += map(Path, main_view([str(f) for f in self.rl(task, starts)]))
            note.detail = (f"{self.cfg.rl.algo} from SFT steps {', '.join(map(str, started_from))}"
                           if started_from else "no start")
        with self._stage("eval-rl") as note:
            note.detail = _evaluated(*self.evaluate(rl_folders))  # the sweep evaluated the RL task; this adds the others

        with self._stage("spectrum") as note:
            last = sft_folders[max(sft_folders)]
            peak_row = main_view(ood_peak(self.store, self.cfg.tasks[0], eval_set=self.eval_set(self.cfg.tasks[0])))
            peak = Path(peak_row["checkpoint"]) if peak_row else last
            references = {}
            if "base" in self.cfg.spectral.references:
                references["base"] = sft_folders.get(0, base)
            if "ood-peak" in self.cfg.spectral.references:
                references["ood-peak"] = peak
            targets = [sft_folders[s] for s in sorted(sft_folders)]
            if self.cfg.spectral.targets == "sft+rl":
                targets += rl_folders
            rows, aligned = self.spectrum(targets, references), on_main(lambda: self.align(rl_folders, peak))
            note.detail = f"{rows} new spectral rows, {aligned} new alignment rows"

        with self._stage("edits") as note:
            edit_folders = ([Path(f) for f in on_main(lambda: [str(f) for f in self.edits(peak, last)])]
                            if Path(peak).resolve() != Path(last).resolve() else [])
            note.detail = (f"{len(edit_folders)} edits of {read_manifest(last).label} toward the OOD peak "
                           f"{read_manifest(peak).label}" if edit_folders else
                           "none: the OOD peak is the last SFT checkpoint, so there is no forgetting to undo")
        with self._stage("eval-edits") as note:
            note.detail = _evaluated(*self.evaluate(edit_folders))

        with self._stage("report") as note:
            report = Path(on_main(lambda: str(build_report(self.run.root))))
            note.detail = str(report)
        log.info("study finished in %.0f s; report at %s", time.perf_counter() - started, report)
        return report

    @contextmanager
    def _stage(self, name: str) -> Iterator[StageNote]:
        log.info("stage %s", name)
        self.on_stage(name)
        began, note = time.perf_counter(), StageNote()
        yield note
        seconds = time.perf_counter() - began
        log.info("stage %s done in %.1f s: %s", name, seconds, note.detail)
        self.on_stage_done(name, seconds, note.detail)


def _evaluated(total: int, new: int) -> str:
    """`18 evaluations` or `18 evaluations (12 stored before)`."""
    return f"{total} evaluations" + (f" ({total - new} stored before)" if new < total else "")


def run_study(cfg: StudyConfig, out: str | Path, progress: bool = True,
              on_stage: Callable[[str], None] | None = None, on_stage_done: StageDone | None = None,
              samples: bool = False, report_to: Sequence[str] = ()) -> Path:
    """Run (or finish) the study of `cfg` in `out`; returns the report's path. StudyError for a config that
    cannot run, RunLockedError while another process holds `out`. `samples` and `report_to`: see `Study`
    and `rlheal.tracking`."""
    from rlheal.integrity import forget_damaged
    from rlheal.lock import launched_rank, run_lock

    check_before_claiming(cfg)
    with run_lock(out):
        run = Run(Path(on_main(_open_run, str(out), cfg)))
        main = launched_rank() == 0
        handler = _setup_logging(run) if main else logging.NullHandler()
        try:
            on_main(lambda: len(forget_damaged(run.root)))
            trackers = Trackers(report_to if main else (), run.root)
            study = Study(cfg, run.root, progress=progress, on_stage=on_stage, on_stage_done=on_stage_done,
                          samples=samples, trackers=trackers)
            try:
                return study.run_all()
            finally:
                study.store.close()
                trackers.close()
        finally:
            logging.getLogger("rlheal").removeHandler(handler)
            handler.close()


def _open_run(out: str, cfg: StudyConfig) -> str:
    """Clear the temporaries of killed writes from run folder `out` and claim it for `cfg` (rank 0's part of
    opening it, under its lock); returns the folder."""
    from rlheal.atomic import clean_stale

    clean_stale(out)
    return str(claim_run_folder(Path(out), cfg).root)
