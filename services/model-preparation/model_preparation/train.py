"""Stage ``train``: ResNet50V2 from scratch on the prepared TFRecords (the network in
``network.py``, the input pipelines in ``tfdata.py``, the loop in ``loop.py``).

The exported model takes raw uint8 pixels (``image``) and returns softmax ``probabilities``;
rescaling is inside the model, augmentation only in the training input pipeline, so the graph
that is served is exactly the inference graph.

Built to grow past one machine's memory and one device:
- the training split is streamed from its shards (several read in parallel, interleaved, then a
  bounded shuffle buffer); ``train.cache`` decides whether decoded images are kept: ``none``
  (decode every pass, memory flat whatever the data size), ``file`` (on local disk next to the
  artifacts, removed after the run) or ``memory`` (fastest, grows with the data);
- one training loop runs under whichever ``tf.distribute`` strategy the host offers: a single
  device, every local GPU (MirroredStrategy) or several hosts (MultiWorkerMirroredStrategy, from
  ``TF_CONFIG``), a loop of our own (``loop.py`` says why);
- ``train.mixed_precision``: ``mixed_bfloat16`` computes in bfloat16 (CPUs with bfloat16 or AMX
  units, and GPUs), ``mixed_float16`` in float16 with loss scaling (GPUs), ``float32`` not at all,
  ``auto`` bfloat16 on a CPU that has those units and no GPU, else float32 (elsewhere bfloat16 is
  emulated, slower); the saved model is always float32.
Every random choice (initial weights, shuffle, augmentation) derives from ``train.seed``, so the
cache mode changes speed and memory, never the trained model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .common import (
    ARTIFACTS,
    DVCLIVE,
    KERAS_MODEL,
    PREPARED,
    PipelineError,
    Prepared,
    load_settings,
    quiet_tensorflow,
    run_cli,
)

quiet_tensorflow()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from .loop import Run, fit  # noqa: E402
from .network import build_model, make_optimizer  # noqa: E402
from .train_params import TrainParams  # noqa: E402
from .warmstart import parse_init, record, serving_source, warm_start  # noqa: E402

HEARTBEAT_TIMEOUT_S = 120  # a starved worker is still alive (see _tolerate_busy_workers)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # a CPU that computes bfloat16 natively


def precision_policy(setting: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The Keras policy for ``train.mixed_precision`` on this machine."""
    if setting != "auto":
        return setting
    if tf.config.list_logical_devices("GPU"):
        return "float32"  # not measured on a GPU here: the user chooses there
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"


def distribution_strategy() -> tf.distribute.Strategy:
    """Several hosts when ``TF_CONFIG`` names a cluster of two or more tasks, else every local
    GPU when there are several, else the default one-device strategy."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        _tolerate_busy_workers(cluster)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _tolerate_busy_workers(cluster: dict[str, list[str]]) -> None:
    """Let a worker go ``HEARTBEAT_TIMEOUT_S`` without a heartbeat before the cluster calls it dead.

    TensorFlow's coordination service declares a task crashed after 10 s of silence and aborts
    every collective. A worker on a CPU shared with other jobs (two processes on two cores, a
    busy Kubernetes node) can be starved that long while still healthy, and the whole run is lost.
    The strategy configures the service only when nothing has (the same jobs and leader as it
    would choose), so this sets it first with a longer timeout; a worker that really died is
    still detected, later."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.train.ClusterSpec(cluster)
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]  # fmt: skip
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
    )


def describe(strategy: tf.distribute.Strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        workers = sum(len(tasks) for tasks in spec.values())
        role = f"{strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id}"
        return f"{replicas} replicas on {workers} workers (MultiWorkerMirroredStrategy, {role})"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return f"{replicas} replicas (MirroredStrategy)"
    return "1 device"


def train(
    prepared: Path,
    params: TrainParams,
    *,
    out: Path | None = None,
    live_dir: Path | None = None,
    strategy: tf.distribute.Strategy | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_best: Callable[[keras.Model], None] | None = None,
) -> list[dict[str, float]]:
    """Train; the chief saves the best model (float32, lowest val_loss) to ``out`` and the
    DVCLive logs to ``live_dir`` (either None: not written). ``on_epoch(epoch, logs)`` runs
    after every epoch and may raise to stop the run (a pruned search trial does);
    ``on_best(model)`` gets that best model in memory (a search trial scores it).

    Returns the per-epoch history (the same on every worker)."""
    meta = Prepared.read(prepared)
    size, labels = meta.image_size, list(meta.labels)
    strategy = strategy or distribution_strategy()
    chief = strategy.extended.should_checkpoint
    replicas = strategy.num_replicas_in_sync
    if params.batch_size % replicas:
        raise PipelineError(
            f"train.batch_size {params.batch_size} must be a multiple of the {replicas} replicas"
        )
    policy = precision_policy(params.mixed_precision)
    print(f"train: {describe(strategy)}, cache={params.cache}, {policy}", flush=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix=".train-cache-", dir=ARTIFACTS))
    run = Run(
        prepared,
        params,
        size,
        meta.num_val,
        cache_dir,
        strategy,
        live_dir if chief else None,
        on_epoch,
    )
    kind, init_model = parse_init(params.init)
    source = serving_source(init_model) if kind == "serving" else None
    keras.utils.set_random_seed(params.seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = build_model(size, len(labels), params.bn_momentum, params.pixels)
            if source is not None:
                print(f"train: starting from {warm_start(model, source, labels)}", flush=True)
            optimizer = make_optimizer(params, policy, model.trainable_variables)
        history, best = fit(model, optimizer, run)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        shutil.rmtree(cache_dir, ignore_errors=True)
    if chief and (out is not None or on_best is not None):
        # plain float32, no strategy
        final = build_model(size, len(labels), params.bn_momentum, params.pixels)
        final.set_weights(best)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            final.save(out)
            record(source)
            print(f"train: best model (lowest val_loss) saved to {out}")
        if on_best is not None:
            on_best(final)
    return history


def main() -> None:
    train(PREPARED, load_settings(TrainParams, "train"), out=KERAS_MODEL, live_dir=DVCLIVE)


if __name__ == "__main__":
    run_cli(main)
