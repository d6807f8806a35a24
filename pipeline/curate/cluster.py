"""curate on a cluster executor (datatrove): the stage's own checks per shard, its own decisions at the end.

For a corpus that outgrows one machine. The DVC stage (stages/curate.py) stays the source of
truth; this runs the same code with the same `curate` params and, for the same input, writes
the same bytes (train/val/quarantine/meta) and the same report. docs/curate-cluster.md shows
how to run it (examples/cluster/curate_datatrove.py, local or Slurm).

Map: one datatrove task per shard, a shard being every `tasks`-th file of the sorted raw files.
  RawShardReader  the stage's Reader on the task's files: same line numbers, over-long lines,
                  BOM repairs, unreadable files. Writes shards/<rank>.json at the end (files,
                  record and repair counts, the params digest).
  CurateChecks    the stage's RecordChecker in batches: validation, PII scrub, quality, length
                  under the chat template, content digest, eval-item leaks, MinHash. A record
                  that fails a check needing no other record is dropped, with the stage's reason
                  code, to quarantine/<rank>.jsonl.gz; the rest go to kept/<rank>.jsonl.gz. Each
                  line carries what the global checks need (digest, MinHash, split, leaks...).
Reduce: one task after all map tasks. `reduce_shards` merges the shard files back into input
  order and replays Curator's decisions on them (exact duplicates, eval contamination, near
  duplicates by MinHash LSH over the kept records), then writes with the stage's own writer.

Why not datatrove's MinHash dedup stages for the global part: they shingle, hash, bucket and
pick cluster representatives their own way (no Jaccard check on candidates, no first-kept-wins
in input order), so they would decide differently from the stage and the two reports could not
be compared. The reduce here only reads the small per-record summaries (the expensive part,
tokenization and the heuristics, ran on the cluster); its cost is the LSH index of kept records
in one process, measured in docs/curate-cluster.md.

Eval contamination is decided in the map although the stage checks it after exact duplicates:
the two never compete, since a record with leaks is never kept, so no later record can be an
exact duplicate of a kept one that has leaks (same content, same leaks).
"""

from __future__ import annotations

import base64
import gzip
import heapq
import json
import multiprocessing
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers.jsonl import JsonlWriter

from pipeline.curate import CurationFailed, write_curated
from pipeline.curate.render import write_reports
from pipeline.curate import validate as v
from pipeline.curate.checks import Checked, RecordChecker
from pipeline.curate.process import BATCH_RECORDS, Curator, contamination_rejection, content_rejection
from pipeline.curate.readers import Item, Reader, match_files
from pipeline.files import atomic_write_json, digest_json
from pipeline.params import CurateParams

_ITEM = "tailgate_item"      # Document.metadata key: the Item, between reader and checks (same process)
_FILE = "tailgate_file"      # Document.metadata key: index of the record's file in the sorted list
_SUMMARY = "tailgate"        # Document.metadata key: the JSON summary that the writers write
KEPT, QUARANTINE, SHARDS = "kept", "quarantine", "shards"


def params_digest(params: CurateParams) -> str:
    return digest_json(params.model_dump(mode="json"))


def own_rejection(c: Checked, p: CurateParams, index) -> v.Rejected | None:
    """The first check the record fails on its own content, or None (it then waits for the
    global checks). Same functions, same order as Curator._verdict."""
    if c.rejected:
        return v.Rejected(*c.rejected)
    return content_rejection(c, p) or contamination_rejection(c, p, index)


# ---------------------------------------------------------------- summaries on disk

def encode(item: Item, c: Checked, file_index: int) -> dict:
    """One JSON object per record: where it came from, what the quarantine would keep of it,
    and every non-empty field of its Checked."""
    out = {"file": file_index, "source": item.source, "line": item.line, "raw_fields": item.raw_fields()}
    for f in fields(Checked):
        val = getattr(c, f.name)
        if val is None or (f.name in ("leaks", "prompt_leaks") and not val):
            continue
        if f.name == "record":
            val = val._asdict()
        elif f.name == "digest":
            val = val.hex()
        elif f.name == "minhash":
            val = base64.b64encode(np.asarray(val, dtype="<u8").tobytes()).decode("ascii")
        elif f.name == "leaks":
            val = [[ref, float(share)] for ref, share in val]
        elif f.name == "pii":
            val = dict(val)
        out[f.name] = val
    return out


def decode(obj: dict) -> tuple[Item, Checked]:
    c = Checked()
    for name in ("rejected", "quality", "template"):
        if obj.get(name) is not None:
            setattr(c, name, tuple(obj[name]))
    if (rec := obj.get("record")) is not None:
        c.record = v.Record(rec["id"], rec["slice"], rec["messages"])
    if (pii := obj.get("pii")) is not None:
        c.pii = Counter(pii)
    c.n_tokens, c.split, c.slice = obj.get("n_tokens"), obj.get("split"), obj.get("slice")
    c.val_draw = obj.get("val_draw")
    if (digest := obj.get("digest")) is not None:
        c.digest = bytes.fromhex(digest)
    c.leaks = [(ref, share) for ref, share in obj.get("leaks", ())]
    c.prompt_leaks = list(obj.get("prompt_leaks", ()))
    if (mh := obj.get("minhash")) is not None:
        c.minhash = np.frombuffer(base64.b64decode(mh), dtype="<u8").astype(np.uint64)
    return Item(obj["source"], obj["line"], quarantine_raw=obj["raw_fields"]), c


def _summary_only(self, document: Document) -> dict:
    """JsonlWriter adapter: the line is the record's summary, nothing of datatrove's envelope."""
    return document.metadata[_SUMMARY]


# ---------------------------------------------------------------- map steps

class RawShardReader(BaseReader):
    """Every `world_size`-th raw file (sorted, from rank on), read by the stage's Reader."""

    name = "tailgate raw files"

    def __init__(self, raw_dir: str, params: CurateParams, map_dir: str):
        super().__init__()
        self.raw_dir, self.map_dir = str(raw_dir), str(map_dir)
        self.params = params.model_dump(mode="json")  # plain data: the step is pickled to the cluster

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        params = CurateParams.model_validate(self.params)
        root = Path(self.raw_dir)
        paths = match_files(root, params.raw_glob)
        mine = list(range(rank, len(paths), world_size))
        reader = Reader(params.max_line_bytes)
        n = 0
        for i in mine:
            for item in reader.read([paths[i]]):
                n += 1
                raw = item.raw_fields()
                self.stat_update("records")
                yield Document(text=raw.get("raw") or raw.get("raw_prefix") or "", id=f"{item.source}:{item.line}",
                               metadata={_ITEM: item, _FILE: i})
        atomic_write_json(Path(self.map_dir) / SHARDS / f"{rank:05d}.json", {
            "rank": rank, "world_size": world_size, "files": [str(p.relative_to(root)) for p in paths],
            "mine": mine, "records": n, "blank_lines": reader.blank_lines, "bom_stripped": reader.bom_stripped,
            "params_digest": params_digest(params)})


class CurateChecks(BaseFilter):
    """The stage's per-record checks as a datatrove filter; drops carry the stage's reason code."""

    name = "tailgate curate checks"

    def __init__(self, params: CurateParams, tokenizer_dir: str, suites_dir: str, exclusion_writer=None):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=BATCH_RECORDS)
        self.params = params.model_dump(mode="json")
        self.tokenizer_dir, self.suites_dir = str(tokenizer_dir), str(suites_dir)
        self._checker: RecordChecker | None = None  # built in the task, not pickled with the step

    def __getstate__(self):
        return {**self.__dict__, "_checker": None}

    def _load(self) -> tuple[CurateParams, RecordChecker]:
        from transformers import AutoTokenizer

        from pipeline.curate.decontam import EvalIndex

        p = CurateParams.model_validate(self.params)
        if self._checker is None:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, trust_remote_code=False)
            self._checker = RecordChecker(p, tokenizer, EvalIndex.from_suites(p.decontam, Path(self.suites_dir)))
        return p, self._checker

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        p, checker = self._load()
        items = [doc.metadata.pop(_ITEM) for doc in batch]
        verdicts: list[bool | tuple[bool, str]] = []
        for doc, item, c in zip(batch, items, checker.check_batch(items)):
            summary = encode(item, c, doc.metadata.pop(_FILE))
            if (rej := own_rejection(c, p, checker.eval_index)) is not None:
                summary.update(reason=rej.reason, detail=rej.detail)  # for people; the reduce decides again
                verdicts.append((False, rej.reason))
            else:
                verdicts.append(True)
            doc.metadata[_SUMMARY] = summary
        return verdicts


def map_pipeline(params: CurateParams, raw_dir, suites_dir, tokenizer_dir, map_dir) -> list[PipelineStep]:
    def writer(kind: str) -> JsonlWriter:
        return JsonlWriter(str(Path(map_dir) / kind), output_filename="${rank}.jsonl.gz", compression="gzip",
                           adapter=_summary_only)

    return [RawShardReader(raw_dir, params, map_dir),
            CurateChecks(params, tokenizer_dir, suites_dir, exclusion_writer=writer(QUARANTINE)),
            writer(KEPT)]


# ---------------------------------------------------------------- reduce

@dataclass
class ShardCounts:
    """What the stage's report takes from its Reader, summed over the shards."""

    blank_lines: int = 0
    bom_stripped: int = 0
    records: int = 0
    files: list[str] = field(default_factory=list)
    world_size: int = 0


def read_manifests(map_dir: Path, params: CurateParams) -> ShardCounts:
    """Check that every map task finished, all saw the same files and params, and together read
    each file once; refuse otherwise (a partial map would silently drop records)."""
    found = sorted((map_dir / SHARDS).glob("*.json"))
    if not found:
        raise FileNotFoundError(f"no shard manifests under {map_dir / SHARDS}: has the map run?")
    shards = [json.loads(f.read_text()) for f in found]
    world = shards[0]["world_size"]
    for s in shards:
        if s["world_size"] != world or s["files"] != shards[0]["files"]:
            raise RuntimeError(f"shard manifests of different map runs under {map_dir / SHARDS} (task counts or "
                               "file lists differ): clear the map directory and rerun the map")
    ranks = sorted(s["rank"] for s in shards)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        raise RuntimeError(f"map incomplete: {len(ranks)} of {world} shard manifests (missing ranks {missing[:10]})")
    expected = params_digest(params)
    for s in shards:
        if s["params_digest"] != expected:
            raise RuntimeError(f"shard {s['rank']} ran with other curate params ({s['params_digest'][:12]} != "
                               f"{expected[:12]}); rerun the map")
    covered = sorted(i for s in shards for i in s["mine"])
    if covered != list(range(len(shards[0]["files"]))):
        raise RuntimeError("the shards do not cover every raw file exactly once")
    return ShardCounts(sum(s["blank_lines"] for s in shards), sum(s["bom_stripped"] for s in shards),
                       sum(s["records"] for s in shards), shards[0]["files"], world)


def _summaries(path: Path) -> Iterator[dict]:
    if path.exists():  # a shard whose records all went one way has no file for the other
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def merged_summaries(map_dir: Path, world_size: int, expected: int) -> Iterator[tuple[Item, Checked]]:
    """Every record's summary in input order (file, then line): each shard file is already in
    that order, so a k-way merge restores the single-machine order."""
    streams = [_summaries(map_dir / kind / f"{rank:05d}.jsonl.gz") for rank in range(world_size)
               for kind in (KEPT, QUARANTINE)]
    n = 0
    for obj in heapq.merge(*streams, key=lambda o: (o["file"], o["line"])):
        n += 1
        yield decode(obj)
    if n != expected:  # raised inside the writer's atomic_dir: nothing is published
        raise RuntimeError(f"the shard outputs hold {n} records, the readers counted {expected}; rerun the map")


def reduce_shards(params: CurateParams, map_dir, suites_dir, tokenizer_dir, out_dir) -> dict:
    """The stage's outputs and report from the map's shard files (see the module docstring)."""
    from transformers import AutoTokenizer

    from pipeline.curate.decontam import EvalIndex

    map_dir = Path(map_dir)
    counts = read_manifests(map_dir, params)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    curator = Curator(params, tokenizer, EvalIndex.from_suites(params.decontam, Path(suites_dir)))
    outcomes = curator.replay(merged_summaries(map_dir, counts.world_size, counts.records))
    return write_curated(params, curator, outcomes, [Path(f).name for f in counts.files], counts, tokenizer, out_dir)


class CurateReduce(PipelineStep):
    """reduce_shards as a one-task datatrove step; writes the report even when the quarantine
    share or a slice's loss fails the run, as the stage does."""

    name = "tailgate curate reduce"
    type = "tailgate"

    def __init__(self, params: CurateParams, map_dir, suites_dir, tokenizer_dir, out_dir, report_path):
        super().__init__()
        self.params = params.model_dump(mode="json")
        self.map_dir, self.suites_dir, self.tokenizer_dir = str(map_dir), str(suites_dir), str(tokenizer_dir)
        self.out_dir, self.report_path = str(out_dir), str(report_path)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError("the reduce is one task (tasks=1)")
        p = CurateParams.model_validate(self.params)
        # The stage's pages and plots too: curate.md beside the report, plots/ beside it.
        plots = Path(self.report_path).parent / "plots"
        try:
            report = reduce_shards(p, self.map_dir, self.suites_dir, self.tokenizer_dir, self.out_dir)
        except CurationFailed as exc:
            write_reports(exc.report, self.report_path, None, plots)
            raise
        write_reports(report, self.report_path, None, plots)
        self.stat_update("kept", value=report["kept"], unit="run")
        self.stat_update("rejected", value=report["rejected"], unit="run")
        yield from ()


# ---------------------------------------------------------------- executors

@dataclass
class SlurmOptions:
    """What a Slurm cluster needs to know; everything else comes from datatrove's defaults."""

    partition: str
    time: str = "02:00:00"               # per map task
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2              # a map task peaks near 0.4 GB (tokenizer + eval index)
    reduce_time: str = "04:00:00"
    reduce_mem_gb: int = 16              # the LSH index of kept records; see docs/curate-cluster.md
    qos: str | None = None
    env_command: str | None = None       # e.g. "source /path/to/tailgate/.venv/bin/activate"
    job_name: str = "tailgate-curate"
    sbatch_args: dict = field(default_factory=dict)


def build_executors(kind: str, params: CurateParams, raw_dir, suites_dir, tokenizer_dir, work_dir, out_dir,
                    report_path, tasks: int, workers: int = -1, slurm: SlurmOptions | None = None):
    """(map executor, reduce executor); `reduce.run()` runs the map first (datatrove `depends`).

    work_dir holds the shard files (map/) and datatrove's logs, stats and completion markers
    (logs/map, logs/reduce); a rerun skips the tasks already completed.
    """
    work = Path(work_dir)
    map_dir = work / "map"
    steps = map_pipeline(params, raw_dir, suites_dir, tokenizer_dir, map_dir)
    reduce = [CurateReduce(params, map_dir, suites_dir, tokenizer_dir, out_dir, report_path)]
    if kind == "local":
        # fork where there is one: a task starts from this process instead of re-importing
        # transformers in a fresh interpreter (datatrove's default, forkserver)
        start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        mapper = LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=str(work / "logs/map"),
                                       start_method=start)
        return mapper, LocalPipelineExecutor(reduce, tasks=1, logging_dir=str(work / "logs/reduce"), depends=mapper)
    if kind != "slurm":
        raise ValueError(f"executor {kind!r}: expected local or slurm")
    if slurm is None:
        raise ValueError("the slurm executor needs SlurmOptions (at least a partition)")
    common = dict(partition=slurm.partition, qos=slurm.qos, env_command=slurm.env_command,
                  sbatch_args=dict(slurm.sbatch_args))
    mapper = SlurmPipelineExecutor(steps, tasks=tasks, workers=workers, time=slurm.time,
                                   cpus_per_task=slurm.cpus_per_task, mem_per_cpu_gb=slurm.mem_per_cpu_gb,
                                   job_name=f"{slurm.job_name}-map", logging_dir=str(work / "logs/map"), **common)
    reducer = SlurmPipelineExecutor(reduce, tasks=1, time=slurm.reduce_time, cpus_per_task=1,
                                    mem_per_cpu_gb=slurm.reduce_mem_gb, job_name=f"{slurm.job_name}-reduce",
                                    logging_dir=str(work / "logs/reduce"), depends=mapper, **common)
    return mapper, reducer
