"""Training at scale: mixed precision, XLA and tf.distribute strategies, on the CPU.

The GPU paths run here too, forced on: ``train.mixed_precision: on`` and
``train.jit_compile: on`` on a CPU, MirroredStrategy over the CPU split into
two logical devices, MultiWorkerMirroredStrategy over two local processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline import distribution, precision, runner
from pipeline.config import load_config
from core.errors import ConfigError
from tests.conftest import REPO, write_config

# One phase, the whole backbone trained: the cheapest run that really learns.
TRAIN = {"batch_size": 16, "head_epochs": 0, "head_lr": 0.01, "fine_tune_epochs": 1, "fine_tune_lr": 0.01,
         "fine_tune_at": 1.0, "freeze_batchnorm": False, "batchnorm_momentum": 0.9}
FLOAT_FORMATS = ["tflite-fp32", "onnx-fp32"]


def _passed(cfg) -> dict:
    results = json.loads((cfg.build_root / "export/results.json").read_text())
    by_format = {a["format"]: a for a in results["artifacts"]}
    for fmt, entry in by_format.items():
        assert entry["status"] == "passed", (fmt, entry.get("error"))
    return by_format


# float16 with XLA in CI (the GPU path); bfloat16 (the CPU path of AVX512-BF16 hosts) behind slow, its
# policy-specific parts in CI by test_bfloat16_builds_a_float32_head_and_saves_float32.
@pytest.mark.parametrize("setting, policy, jit, dtype", [
    ("on", "mixed_float16", "on", "float16"),
    pytest.param("bfloat16", "mixed_bfloat16", "off", "bfloat16", marks=pytest.mark.slow)])
def test_mixed_precision_and_xla_forced_on_a_cpu_train_in_float16_and_export_float32(tmp_path, setting, policy, jit,
                                                                                      dtype):
    from pipeline import models
    from core.keras_compat import keras
    from core.loader import load_classifier as load_model

    path = write_config(tmp_path / "tiny.yaml",
                        train={**TRAIN, "head_epochs": 1, "fine_tune_epochs": 0, "mixed_precision": setting,
                               "jit_compile": jit, "distribute": "none"},
                        export={"formats": FLOAT_FORMATS, "latency_runs": 0})
    cfg = load_config(path)
    assert runner.run(cfg, str(path)) == ["data", "finetune", "export"]

    # What the model that trained computed in, read from it during the run.
    trained = json.loads((cfg.build_root / "finetune/history.json").read_text())["training"]
    assert trained["policy"] == policy and trained["backbone_compute_dtype"] == dtype
    assert trained["last_layer_dtype"] == "float32" and trained["output_dtype"] == "float32"
    assert trained["mixed_precision"] is True and trained["precision_policy"] == policy
    assert trained["jit_compile"] is (jit == "on")
    # The global policy is back: nothing after the training computes in float16.
    assert keras.mixed_precision.global_policy().name == "float32"

    # The saved model is the model a float32 training saves, layer for layer: the
    # exporters convert the same graph as before, only the weights are new.
    saved = load_model(cfg.build_root / "finetune/model.keras")
    reference = models.build_classifier(cfg.model, 10, cfg.data.image_size)
    models.set_batchnorm_momentum(reference, cfg.train.batchnorm_momentum)
    assert saved.get_config() == reference.get_config()
    assert {layer.compute_dtype for layer in saved.layers} == {"float32"}
    assert all(w.dtype == np.float32 for w in saved.get_weights())

    by_format = _passed(cfg)
    assert set(by_format) == set(FLOAT_FORMATS)
    for entry in by_format.values():
        assert entry["validation"]["top1_agreement"] >= 0.995 and entry["validation"]["max_abs_diff"] <= 1e-4
    _assert_float32_files(cfg.build_root / "artifacts")


def _assert_float32_files(artifacts):
    """No float16 tensor or initializer in the exported files: they are the float32 files of before."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    tflite = Interpreter(model_path=str(next(artifacts.glob("*_fp32.tflite"))))
    kinds = {np.dtype(t["dtype"]).name for t in tflite.get_tensor_details()}
    assert "float16" not in kinds and "float32" in kinds
    assert [d["dtype"] for d in tflite.get_input_details() + tflite.get_output_details()] == [np.float32, np.float32]
    graph = onnx.load(str(next(artifacts.glob("*_fp32.onnx")))).graph
    assert {init.data_type for init in graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64,
                                                              onnx.TensorProto.INT32}
    casts = [a.i for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert onnx.TensorProto.FLOAT16 not in casts


@pytest.mark.parametrize("setting, gpus, expected", [
    ("auto", 0, False), ("auto", 1, True), ("auto", 4, True), ("on", 0, True), ("off", 2, False)])
def test_auto_turns_mixed_precision_and_xla_on_only_with_a_gpu(setting, gpus, expected):
    assert precision.resolve(setting, gpus) is expected


@pytest.mark.parametrize("setting, gpus, expected", [
    ("auto", 0, "float32"), ("auto", 1, "mixed_float16"), ("on", 0, "mixed_float16"), ("off", 2, "float32"),
    ("bfloat16", 0, "mixed_bfloat16"), ("bfloat16", 2, "mixed_bfloat16")])
def test_mixed_precision_setting_names_the_keras_policy(setting, gpus, expected):
    assert precision.policy_name(setting, gpus) == expected


def test_bfloat16_builds_a_float32_head_and_saves_float32():
    from pipeline import models
    from pipeline.config import ModelConfig
    from core.keras_compat import keras

    spec = ModelConfig(backbone="mobilenet_v2", alpha=0.35, weights="none", dropout=0.0)
    with precision.policy("mixed_bfloat16"):
        model = models.build_classifier(spec, 3, 32)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert models.backbone_layers(model)[0].compute_dtype == "bfloat16"
    assert model.layers[-1].compute_dtype == "float32" and model.output.dtype.name == "float32"
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    assert np.isfinite(model.train_on_batch(images, np.array([0, 1, 2, 0])))  # bfloat16 needs no loss scaling
    saved = precision.float32_copy(model)
    assert {layer.compute_dtype for layer in saved.layers} == {"float32"}
    assert all(a.dtype == np.float32 and np.array_equal(a, b) for a, b in zip(saved.get_weights(), model.get_weights()))


def test_on_and_off_written_bare_in_yaml_are_the_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {source: digits}\ntrain: {mixed_precision: on, jit_compile: off}\n")
    t = load_config(path).train
    assert (t.mixed_precision, t.jit_compile) == ("on", "off")
    assert load_config(path, ["train.jit_compile=on"]).train.jit_compile == "on"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(path, ["train.mixed_precision=fp16"])


TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("setting, gpus, tf_config, expected", [
    ("auto", 0, None, "none"), ("auto", 1, None, "none"), ("auto", 2, None, "mirrored"),
    ("auto", 2, TWO_WORKERS, "multi_worker"), ("none", 8, TWO_WORKERS, "none"), ("mirrored", 0, None, "mirrored"),
    ("multi_worker", 0, TWO_WORKERS, "multi_worker")])
def test_auto_picks_multi_worker_with_tf_config_then_mirrored_with_several_gpus(setting, gpus, tf_config, expected):
    env = {"TF_CONFIG": json.dumps(tf_config)} if tf_config else {}
    assert distribution.resolve_kind(setting, gpus, distribution.task_from_env(env)) == expected


def test_multi_worker_without_tf_config_or_with_a_broken_one_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^train.distribute is multi_worker but TF_CONFIG is not set; .*\.$"):
        distribution.resolve_kind("multi_worker", 0, distribution.task_from_env({}))
    broken = {"cluster": {"worker": ["127.0.0.1:2001"]}, "task": {"type": "worker", "index": 3}}
    for raw in ("{not json", json.dumps(broken), json.dumps({"task": {"type": "worker", "index": 0}})):
        with pytest.raises(ConfigError, match=r"^TF_CONFIG is not usable \(.*\); set it to JSON"):
            distribution.task_from_env({"TF_CONFIG": raw})


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True), ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False)])
def test_the_chief_is_the_chief_task_else_worker_0(cluster, task, chief):
    env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]}})}
    found = distribution.task_from_env(env)
    assert found.is_chief is chief and found.tasks == 2


class _Replicas:
    def __init__(self, n):
        self.num_replicas_in_sync = n


@pytest.mark.parametrize("rule, replicas, factor", [
    ("linear", 1, 1.0), ("linear", 4, 4.0), ("sqrt", 4, 2.0), ("sqrt", 2, math.sqrt(2)), ("none", 8, 1.0)])
def test_global_batch_is_per_replica_batch_times_replicas_and_lr_follows_the_rule(rule, replicas, factor):
    setup = distribution.Setup(kind="mirrored", strategy=_Replicas(replicas), task=None,
                               precision_policy="float32", jit_compile=False, lr_scaling=rule)
    assert setup.global_batch(16) == 16 * replicas
    assert setup.lr(1e-3) == pytest.approx(1e-3 * factor)


# Splits the CPU into two logical devices before TensorFlow starts (it cannot be
# done after), then runs `python -m pipeline` once per argument group ("--" between groups).
TWO_CPUS = """
import sys
from core.keras_compat import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.__main__ import main
args = sys.argv[1:]
while args:
    cut = args.index("--") if "--" in args else len(args)
    code = main(args[:cut])
    if code:
        sys.exit(code)
    args = args[cut + 1:]
"""
SUBPROCESS_TIMEOUT_S = 900  # only against a hung child


@pytest.fixture(scope="session")
def colour_photos(tmp_path_factory):
    """3 colour classes x 100 photos: enough validation images (60) to tell two accuracies apart."""
    from PIL import Image

    from tests.conftest import CLASS_COLOURS, _photo

    root = tmp_path_factory.mktemp("colours") / "photos"
    rng = np.random.default_rng(3)
    for name, colour in CLASS_COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(_photo(rng, colour, 32)).save(root / name / f"{i:03d}.png")
    return root


def _colour_data(photos) -> dict:
    return {"source": "folder", "path": str(photos), "image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2,
            "seed": 7, "augment": []}


@pytest.fixture(scope="session")
def trained_backbone(tmp_path_factory, colour_photos):
    """A no-top MobileNetV2 .h5 trained on the colour photos: transfer learning's starting point, made here."""
    from core.keras_compat import keras
    from core.loader import load_classifier as load_model

    tmp = tmp_path_factory.mktemp("backbone")
    path = write_config(tmp / "backbone.yaml", data=_colour_data(colour_photos),
                        train={**TRAIN, "fine_tune_epochs": 3, "fine_tune_lr": 0.003, "batchnorm_momentum": 0.5,
                               "distribute": "none"},
                        export={"formats": ["keras"], "latency_runs": 0})
    cfg = load_config(path)
    runner.run(cfg, str(path))
    trained = load_model(cfg.build_root / "finetune/model.keras")
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in base.layers:
        if layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    out = tmp / "mobilenet_v2_0.35_colours_no_top.h5"
    base.save_weights(str(out))
    return out


# Transfer learning's first phase on the trained backbone, one epoch. The same global batch
# (16 on one device, 8 on each of two) and learning rate make the two runs the same
# optimization; only the order of floating-point sums differs.
HEAD_ONLY = {"batch_size": 16, "head_epochs": 1, "head_lr": 0.003, "fine_tune_epochs": 0, "freeze_batchnorm": True,
             "lr_scaling": "none", "distribute": "none"}
# The mirrored model as it is, and after pruning then sparsity-preserving QAT under the strategy.
OPTIMIZED_FORMATS = ["tflite-fp32", "tflite-pruned-int8"]


@dataclass
class TwoDeviceRuns:
    single: Path  # config files
    mirrored: Path
    output: str


def _on_two_cpus(*args: str) -> str:
    """``python -m pipeline`` with ``args`` (groups split by "--") in one process whose CPU is two devices; its log."""
    proc = subprocess.run([sys.executable, "-c", TWO_CPUS, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


@pytest.fixture(scope="session")  # not torn down when another module runs between two users
def two_device_runs(tmp_path_factory, colour_photos, trained_backbone):
    """The same fine-tuning on one device, then under MirroredStrategy over two logical CPUs."""
    tmp = tmp_path_factory.mktemp("mirrored")
    model = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": str(trained_backbone), "dropout": 0.0}
    common = dict(data=_colour_data(colour_photos), model=model,
                  optimize={"prune": {"target_sparsity": 0.5, "epochs": 2, "lr": 1e-3},
                            "qat": {"epochs": 1, "lr": 1e-4}, "distill_weight": 0.0},
                  export={"formats": ["keras"], "latency_runs": 0, "calibration_samples": 32})
    single = write_config(tmp / "single.yaml", name="single", train=HEAD_ONLY, **common)
    mirrored = write_config(tmp / "mirrored.yaml", name="mirrored",
                            train={**HEAD_ONLY, "batch_size": 8, "distribute": "mirrored"}, **common)
    output = _on_two_cpus("run", "--config", str(single), "--", "run", "--config", str(mirrored))
    return TwoDeviceRuns(single, mirrored, output)


def _history(cfg) -> dict:
    return json.loads((cfg.build_root / "finetune/history.json").read_text())


@pytest.mark.xdist_group("two_device_runs")  # one worker trains the two runs, for both tests
def test_one_epoch_mirrored_on_two_cpus_reaches_the_validation_accuracy_of_one_device(two_device_runs):
    single_cfg = load_config(two_device_runs.single)
    single, mirrored = _history(single_cfg), _history(load_config(two_device_runs.mirrored))
    assert (single["training"]["replicas"], single["training"]["global_batch_size"]) == (1, 16)
    assert (mirrored["training"]["distribute"], mirrored["training"]["replicas"]) == ("mirrored", 2)
    assert mirrored["training"]["global_batch_size"] == 16
    assert "MirroredStrategy over /job:localhost/replica:0/task:0/device:CPU:0, " in two_device_runs.output
    a, b = single["best_val_accuracy"], mirrored["best_val_accuracy"]
    n = sum(json.loads((single_cfg.build_root / "data/split.json").read_text())["counts"]["val"])
    # It learned (3 classes: chance is 1/3), and the two agree within two standard
    # deviations of the difference of two accuracies measured on n images.
    p = (a + b) / 2
    assert min(a, b) >= 0.6, (a, b)
    assert abs(a - b) <= 2 * math.sqrt(2 * p * (1 - p) / n) + 1 / n, (a, b, n)


# ~2 min on 2 cores (pruning and QAT under the strategy, then converting the QAT model). It is
# also the optimize stage's end-to-end test: what the stage makes, and what re-runs it.
@pytest.mark.xdist_group("two_device_runs")
def test_a_mirrored_model_goes_through_optimize_and_export_within_the_usual_budgets(two_device_runs):
    from exporters import convert
    from exporters import inspect

    formats = f"export.formats=[{','.join(OPTIMIZED_FORMATS)}]"
    output = _on_two_cpus("run", "--config", str(two_device_runs.mirrored), "--set", formats)
    assert "[finetune] up to date, skipped" in output  # the model the test above trained
    assert "[optimize] training on MirroredStrategy over" in output
    cfg = load_config(two_device_runs.mirrored, [formats])
    report = json.loads((cfg.build_root / "optimize/report.json").read_text())
    assert (report["training"]["distribute"], report["training"]["replicas"]) == ("mirrored", 2)
    assert report["models"] == ["pruned-qat"]
    assert report["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.005)
    assert report["pruning"]["sparsity_after_qat"] == pytest.approx(0.5, abs=0.005)
    assert report["pruning"]["layer_sparsity"]["Conv1"] == pytest.approx(0.5, abs=0.02)

    by_format = _passed(cfg)
    assert list(by_format) == OPTIMIZED_FORMATS
    for fmt, entry in by_format.items():
        # The budgets a model trained on one device is held to, unchanged, and met.
        exporter = convert.get(fmt)
        assert entry["validation"]["min_top1_agreement"] == exporter.min_top1_agreement
        assert entry["validation"]["max_accuracy_drop_pp"] == exporter.max_accuracy_drop_pp
        assert (cfg.build_root / "artifacts" / entry["file"]).is_file()
    pruned = by_format["tflite-pruned-int8"]
    assert pruned["source_model"] == "pruned-qat" and pruned["fully_integer"]
    # Sparsity read back from the exported bytes, not from the config.
    assert pruned["sparsity"] >= 0.49 and by_format["tflite-fp32"]["sparsity"] < 0.05
    assert pruned["sparsity"] == inspect.tflite_summary(cfg.build_root / "artifacts" / pruned["file"])["sparsity"]

    assert runner.run(cfg, str(two_device_runs.mirrored)) == []  # (no strategy is made: nothing trains)
    # An optimize key re-runs optimize and export, not the fine-tuning.
    longer = load_config(two_device_runs.mirrored, [formats, "optimize.qat.epochs=2"])
    assert dict(runner.status(longer)) == {"data": None, "finetune": None,
                                           "optimize": "config section(s) optimize changed",
                                           "export": "after optimize re-runs"}
    # Without an optimized format the stage is not needed and export no longer depends on it.
    plain = load_config(two_device_runs.mirrored, ["export.formats=[keras, tflite-fp32]"])
    assert [name for name, _ in runner.not_needed(plain)] == ["optimize", "bench"]  # bench: targets [] here
    assert dict(runner.status(plain)) == {"data": None, "finetune": None, "export": "config section(s) export changed"}


def _free_ports(count: int) -> list[int]:
    """Ports the OS has just handed out on 127.0.0.1; the test skips where none can be opened."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    except OSError as exc:
        pytest.skip(f"cannot open a local TCP port for the workers ({exc})")
    finally:
        for s in sockets:
            s.close()


WEIGHTS_LINE = re.compile(r"\[finetune\] trained weights sha256 ([0-9a-f]{64})")
# The top ten backbone layers and their BatchNorm train: gradients and BatchNorm
# statistics both go through the workers' collectives, in one short phase.
MULTI_WORKER = {**TRAIN, "fine_tune_at": 10, "distribute": "multi_worker"}


def _start_workers(folders: list[Path], train: dict) -> list[subprocess.Popen]:
    """``python -m pipeline run``, one worker per folder, as if on as many machines: nothing shared but the network."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(len(folders))]}
    procs = []
    for index, folder in enumerate(folders):
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        config = write_config(folder / "tiny.yaml", train=train, export={"formats": ["keras"], "latency_runs": 0})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(folder / "tmp"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(config)], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Each worker's log, once all have ended (killed after SUBPROCESS_TIMEOUT_S: only against a hang)."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * len(procs), "\n".join(o[-3000:] for o in outputs)
    return outputs


def _same_weights_everywhere(outputs: list[str], chief_root: Path) -> None:
    from core.loader import load_classifier as load_model
    from pipeline.stages.finetune import weights_digest

    digests = [WEIGHTS_LINE.findall(output) for output in outputs]
    assert len(digests[0]) == 1 and all(d == digests[0] for d in digests), digests
    assert weights_digest(load_model(chief_root / "finetune/model.keras")) == digests[0][0]


def test_two_workers_on_localhost_train_identical_weights_and_only_the_chief_writes(tmp_path):
    folders = [tmp_path / "machine0", tmp_path / "machine1"]
    chief, worker = _finish(_start_workers(folders, MULTI_WORKER))
    root = load_config(folders[0] / "tiny.yaml").build_root
    _same_weights_everywhere([chief, worker], root)
    assert "[finetune] running with the chief (worker 1" in worker

    history = json.loads((root / "finetune/history.json").read_text())
    assert (history["training"]["distribute"], history["training"]["replicas"]) == ("multi_worker", 2)
    for stage in ("data", "finetune", "export"):
        assert (root / stage / "stamp.json").is_file(), stage
    assert (root / "artifacts/tiny.keras").is_file()
    # The other worker wrote nothing where the chief writes, and removed its temporary folder.
    assert not (folders[1] / "build").exists()
    assert list((folders[1] / "tmp").iterdir()) == []


# Two launches of two workers (~80 s on 2 cores): in the slow suite.
@pytest.mark.slow
def test_killed_workers_resume_together_from_the_chiefs_checkpoint(tmp_path):
    folders = [tmp_path / "machine0", tmp_path / "machine1"]
    train = {**MULTI_WORKER, "head_epochs": 2, "fine_tune_epochs": 1}
    procs = _start_workers(folders, train)
    try:
        for line in procs[0].stdout:
            if "[finetune] checkpoint saved: phase head, epoch 1 of 2" in line:
                break
    finally:
        for proc in procs:  # as a machine failure would: no chance to clean up
            proc.kill()
            proc.wait()
    root = load_config(folders[0] / "tiny.yaml").build_root
    assert (root / "finetune/checkpoint/state.json").is_file()

    outputs = _finish(_start_workers(folders, train))
    for output in outputs:
        assert "[finetune] resuming from checkpoint: phase head, epoch 2 of 2\n" in output
    _same_weights_everywhere(outputs, root)
    history = json.loads((root / "finetune/history.json").read_text())
    assert len(history["head"]["loss"]) == 2 and len(history["fine_tune"]["loss"]) == 1
    assert not (folders[1] / "build").exists()


def test_cli_multi_worker_without_tf_config_exits_2_with_one_sentence(tmp_path):
    path = write_config(tmp_path / "tiny.yaml", train={**TRAIN, "distribute": "multi_worker"})
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: train.distribute is multi_worker but TF_CONFIG is not set;")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "build").exists()
