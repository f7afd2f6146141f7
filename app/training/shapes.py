"""What a spec implies before any data is loaded: task, sizes, parameter count.

Pure Python (no torch): the API uses it to refuse bad specs with 422 before a
job is queued. ``tests/training/test_shapes.py`` checks every number here
against the real datasets and the real ``torch`` modules, so they cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app import spec as s
from app.training.errors import DataError


@dataclass(frozen=True)
class DataInfo:
    """The shape of a data source, known without loading it."""

    task: s.Task
    n_rows: int
    n_features: int
    n_classes: int  # 0 for regression
    input_shape: tuple[int, ...] | None = None  # natural view of a row (digits: 1x8x8)


BUILTIN_INFO: dict[str, DataInfo] = {
    "digits": DataInfo("classification", 1797, 64, 10, (1, 8, 8)),
    "iris": DataInfo("classification", 150, 4, 3),
    "wine": DataInfo("classification", 178, 13, 3),
    "breast_cancer": DataInfo("classification", 569, 30, 2),
    "diabetes": DataInfo("regression", 442, 10, 0),
}


def synthetic_info(src: s.GeneratorBase) -> DataInfo:
    """Task and sizes of a generator's output."""
    n = src.n_samples
    match src:
        case s.MoonsSource() | s.CirclesSource():
            return DataInfo("classification", n, 2, 2)
        case s.BlobsSource():
            return DataInfo("classification", n, src.n_features, src.centers)
        case s.SpiralsSource():
            return DataInfo("classification", n, 2, src.n_classes)
        case s.MakeClassificationSource():
            return DataInfo("classification", n, src.n_features, src.n_classes)
        case s.MakeRegressionSource():
            return DataInfo("regression", n, src.n_features, 0)
        case s.FunctionSource():
            return DataInfo("regression", n, 1, 0)
        case s.MotifOrderSource():
            steps = (src.n_features, src.length)
            return DataInfo("classification", n, math.prod(steps), 2, steps)
    raise ValueError(f"unknown generator {src!r}")


LossSpec = s.CrossEntropy | s.NLL | s.BCE | s.MSE | s.MAE | s.Huber


def job_info(task: s.JobTask, info: DataInfo) -> DataInfo:
    """The data as a job with this task sees it: a reconstruction job's targets are its own
    input features, whatever the source's target (or none)."""
    if task != "reconstruction":
        return info
    return DataInfo("reconstruction", info.n_rows, info.n_features, 0, info.input_shape)


def output_dim(info: DataInfo, loss: LossSpec) -> int:
    """Width of the model's last layer: one logit per class, one value per input feature
    (reconstruction), or one output."""
    if info.task == "classification" and loss.kind != "bce":
        return info.n_classes
    return info.n_features if info.task == "reconstruction" else 1


def effective_input_shape(data: s.Data, info: DataInfo) -> tuple[int, ...]:
    """The shape each row is viewed as: the spec's input_shape, the data's own, or flat."""
    if data.input_shape is not None:
        return tuple(data.input_shape)
    if info.input_shape is not None:
        return info.input_shape
    return (info.n_features,)


def _norm_params(norm: s.Norm, width: int, *, conv: bool) -> int:
    if norm == "none" or (norm == "instance" and not conv):
        return 0  # an MLP's instance norm is affine-free (see spec.MLP.norm)
    return 2 * width


def mlp_parameters(model: s.MLP, n_in: int, n_out: int) -> int:
    total, width_in = 0, n_in
    for width in model.hidden:
        total += width_in * width + width + _norm_params(model.norm, width, conv=False)
        width_in = width
    return total + width_in * n_out + n_out


def cnn_parameters(model: s.CNN, shape: tuple[int, ...], n_out: int) -> int:
    dims = len(shape) - 1
    k = model.kernel_size**dims
    bias = 1 if model.norm == "none" else 0
    total, c_in = 0, shape[0]
    for c in model.channels:
        total += c_in * c * k + bias * c + _norm_params(model.norm, c, conv=True)
        if model.residual:
            per_block = 2 * (c * c * k + bias * c + _norm_params(model.norm, c, conv=True))
            total += model.blocks_per_stage * per_block
        c_in = c
    return total + c_in * n_out + n_out


GATES = {"gru": 3, "lstm": 4}  # weight blocks per recurrent cell


def rnn_parameters(model: s.RNN, shape: tuple[int, ...], n_out: int) -> int:
    """Per layer and direction: input and recurrent weights of every gate, two biases."""
    g, h, dirs = GATES[model.cell], model.hidden, 2 if model.bidirectional else 1
    total, n_in = 0, shape[0]
    for _ in range(model.layers):
        total += dirs * (g * h * (n_in + h) + 2 * g * h)
        n_in = dirs * h
    return total + n_in * n_out + n_out


def transformer_tokens(model: s.Transformer, shape: tuple[int, ...]) -> int:
    """Steps, plus the cls token when it pools."""
    return shape[1] + (1 if model.pooling == "cls" else 0)


def transformer_parameters(model: s.Transformer, shape: tuple[int, ...], n_out: int) -> int:
    d, ff = model.d_model, model.ff
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + 2 * 2 * d + (d * ff + ff) + (ff * d + d)
    total = shape[0] * d + d + model.layers * per_layer + 2 * d  # embedding, layers, norm
    total += d if model.pooling == "cls" else 0
    total += transformer_tokens(model, shape) * d if model.positional == "learned" else 0
    return total + d * n_out + n_out


def parameter_count(spec: s.JobSpec, info: DataInfo) -> int:
    info = job_info(spec.task, info)
    n_out, shape = output_dim(info, spec.loss), effective_input_shape(spec.data, info)
    match spec.model:
        case s.MLP():
            return mlp_parameters(spec.model, info.n_features, n_out)
        case s.CNN():
            return cnn_parameters(spec.model, shape, n_out)
        case s.RNN():
            return rnn_parameters(spec.model, shape, n_out)
    return transformer_parameters(spec.model, shape, n_out)


def layer_count(spec: s.JobSpec) -> int:
    """Weight layers in depth: a Transformer layer counts its two sub-layers."""
    match spec.model:
        case s.MLP():
            return len(spec.model.hidden) + 1
        case s.CNN():
            blocks = spec.model.blocks_per_stage * 2 if spec.model.residual else 0
            return len(spec.model.channels) * (1 + blocks) + 1
        case s.RNN():
            return spec.model.layers + 1
    return 2 * spec.model.layers + 2


def max_width(spec: s.JobSpec) -> int:
    match spec.model:
        case s.MLP():
            return max(spec.model.hidden, default=0)
        case s.CNN():
            return max(spec.model.channels)
        case s.RNN():
            return spec.model.hidden * (2 if spec.model.bidirectional else 1)
    return max(spec.model.d_model, spec.model.ff)


def train_rows(info: DataInfo, split: s.Split) -> int:
    """Rows in the training split (same rounding as the splitter)."""
    n_test = math.ceil(info.n_rows * split.test)
    rest = info.n_rows - n_test
    n_val = math.ceil(rest * split.val / (1 - split.test)) if split.val > 0 else 0
    return rest - n_val


def labelled_rows(labels: s.Labels, n_train: int, n_classes: int) -> int:
    """Training rows kept by data.labels: the fraction rounded up, but at least 2 and one
    per class (batch norm and a stratified subset need them), never more than there are."""
    return min(n_train, max(math.ceil(labels.fraction * n_train), 2, n_classes))


# --------------------------------------------------------------------- memory
#
# Peak memory is estimated per row from the model's layer outputs. In training every
# tensor the forward pass writes may be kept for backward, so their sum bounds what
# autograd saves; backward adds the gradients of one layer's input and output at a time.
# In evaluation (no grad) only one layer's input and output (and a residual block's
# input) are alive. Convolution scratch space belongs to the backend (oneDNN, cuDNN) and
# is not counted. Under bf16 autocast, activations are half as wide but norms add fp32
# copies; measured, that stays below these fp32 counts, so they are used for both.
# tests/training/test_memory_estimate.py measures real allocations.

FLOAT = 4  # bytes of a float32 value
MASK = 4  # a dropout mask element (float on some backends)
INDEX = 8  # a max-pool index or a gathered row index (int64)
EVAL_MIN_BUDGET = 64 * 1024**2  # eval chunks may use this much even after a tiny batch
PARAMETER_COPIES = 12  # weights, grads, <=3 optimizer states, best, noise, bf16 casts, packs
DATA_BYTES_PER_VALUE = 16  # float64 while loading + float32 arrays + device tensors
PREDICTION_BYTES_PER_VALUE = 72  # device + numpy + Python float in a list + JSON text


@dataclass(frozen=True)
class Op:
    """One forward step for one row: elements read, written, and kept alive meanwhile."""

    reads: int
    writes: int
    aux_bytes: int = 0  # saved besides the output: masks, pool indices, norm statistics
    held: int = 0  # inputs of enclosing blocks, alive until those return
    kind: str = "layer"  # or "dropout", or without a module: "pad", "add", "mean"
    grad_saved: int = 0  # bytes autograd keeps for backward only (gates, attention maps)


def _norm_stats(norm: s.Norm, channels: int, groups: int, spatial: int) -> int:
    """Bytes per row a norm keeps besides its output (per-row statistics, copies)."""
    match norm:
        case "layer":
            return 2 * FLOAT
        case "group":
            return 2 * groups * FLOAT
        case "instance":  # computed as a batch norm over (1, rows x channels, ...): a copy
            return (channels * spatial + 2 * channels) * FLOAT
    return 0


def _mlp_ops(model: s.MLP, n_in: int, n_out: int) -> list[Op]:
    """Each block's input stays alive until the block returns (and feeds the skip)."""
    ops, cur = [], n_in
    for w in model.hidden:
        ops.append(Op(cur, w))
        if model.norm != "none":
            ops.append(Op(w, w, _norm_stats(model.norm, 1, model.groups, w), cur))
        if model.activation != "identity":
            ops.append(Op(w, w, held=cur))
        if model.dropout > 0:
            ops.append(Op(w, w, MASK * w, cur, "dropout"))
        if model.residual and cur == w:
            ops.append(Op(2 * w, w, kind="add"))
        cur = w
    return [*ops, Op(cur, n_out)]


def _conv_ops(model: s.CNN, c_in: int, c_out: int, spatial: tuple[int, ...], held: int,
              norm_held: int) -> list[Op]:
    """A 'same' convolution (an even kernel pads a copy of the input first) and its norm."""
    size, k = math.prod(spatial), model.kernel_size
    src, out = c_in * size, c_out * size
    if k % 2 == 0:
        padded = c_in * math.prod(d + k - 1 for d in spatial)
        ops = [Op(src, padded, held=held, kind="pad"), Op(padded, out, held=held + src)]
    else:
        ops = [Op(src, out, held=held)]
    if model.norm != "none":
        ops.append(Op(out, out, _norm_stats(model.norm, c_out, model.groups, size), norm_held))
    return ops


def _block_ops(model: s.CNN, c: int, spatial: tuple[int, ...], outer: int) -> list[Op]:
    """conv-norm-act-conv-norm + identity, then act. The block's input x and the middle
    activation h are locals, alive until the block returns; ``outer`` elements (the
    stage's input) stay alive meanwhile too."""
    n, act = c * math.prod(spatial), model.activation != "identity"
    ops = _conv_ops(model, c, c, spatial, outer, outer + n)
    ops += [Op(n, n, held=outer + n)] if act else []
    ops += _conv_ops(model, c, c, spatial, outer + n, outer + 2 * n)
    add = Op(2 * n, n, held=outer + n, kind="add")
    return [*ops, add] + ([Op(n, n, held=outer + n)] if act else [])


def _cnn_ops(model: s.CNN, shape: tuple[int, ...], n_out: int) -> list[Op]:
    """A stage's input stays alive until the stage returns."""
    c, spatial = shape[0], shape[1:]
    ops: list[Op] = []
    for c_out in model.channels:
        stage_in = c * math.prod(spatial)
        ops += _conv_ops(model, c, c_out, spatial, 0, stage_in)
        n = c_out * math.prod(spatial)
        ops += [Op(n, n, held=stage_in)] if model.activation != "identity" else []
        if model.residual:
            ops += [op for _ in range(model.blocks_per_stage)
                    for op in _block_ops(model, c_out, spatial, stage_in)]
        if model.pool != "none" and min(spatial) >= 2:
            spatial = tuple(d // 2 for d in spatial)
            pooled = c_out * math.prod(spatial)
            ops.append(Op(n, pooled, INDEX * pooled if model.pool == "max" else 0, stage_in))
            n = pooled
        if model.dropout > 0:
            ops.append(Op(n, n, MASK * n, stage_in, "dropout"))
        c = c_out
    return [*ops, Op(c * math.prod(spatial), c, kind="mean"), Op(c, n_out)]


# A recurrent layer per step and direction, in floats, fitted to measured CPU allocations
# (tests/training/test_memory_estimate.py): (per hidden unit, per input feature, constant).
# Evaluation keeps the gates of one step and the input projection of all of them (the
# composite path; oneDNN's fused LSTM needs less); training saves every step's gates too.
RNN_EVAL = {"gru": (6, 1, 16), "lstm": (8, 1, 16)}
RNN_GRAD = {"gru": (6, 3, 16), "lstm": (12, 7, 48)}
# oneDNN's fused LSTM (the CPU's training path) also saves a workspace per layer and
# direction for the backward pass, in bytes per row: (per hidden unit, constant) for each
# step plus the same once per row, fitted to its sizes from 1 to 128 rows, steps and units.
# It comes in whole 4 KiB pages and never under 7 of them, however small the layer:
# ``LSTM_WORKSPACE_FLOOR`` covers that floor and the rounding.
LSTM_WORKSPACE_PER_STEP, LSTM_WORKSPACE_PER_ROW = (60, 520), (40, 480)
LSTM_WORKSPACE_FLOOR = 32 * 1024


def _lstm_workspace_row(hidden: int, steps: int) -> int:
    (a, b), (c, d) = LSTM_WORKSPACE_PER_STEP, LSTM_WORKSPACE_PER_ROW
    return steps * (a * hidden + b) + c * hidden + d


def _per_step(coef: tuple[int, int, int], hidden: int, n_in: int) -> int:
    return coef[0] * hidden + coef[1] * n_in + coef[2]


def _rnn_ops(model: s.RNN, shape: tuple[int, ...], n_out: int) -> list[Op]:
    """The (N, L, C) copy of the row, each layer over all steps, pooling, dropout, head."""
    (c, steps), dirs, h = shape, 2 if model.bidirectional else 1, model.hidden
    ops, n_in = [Op(c * steps, c * steps, kind="pad")], c
    for layer in range(model.layers):
        out = steps * dirs * h
        if layer and model.dropout > 0:  # torch's dropout between stacked layers
            ops.append(Op(out, out, MASK * out, kind="dropout"))
        workspace = dirs * _lstm_workspace_row(h, steps) if model.cell == "lstm" else 0
        ops.append(Op(steps * n_in, out, FLOAT * steps * dirs * _per_step(
            RNN_EVAL[model.cell], h, n_in), grad_saved=FLOAT * steps * dirs * _per_step(
            RNN_GRAD[model.cell], h, n_in) + workspace))
        n_in = dirs * h
    pooled = dirs * h
    ops.append(Op(steps * pooled, pooled, kind="mean") if model.pooling == "mean"
               else Op(pooled, pooled, kind="pad"))
    if model.dropout > 0:
        ops.append(Op(pooled, pooled, MASK * pooled, kind="dropout"))
    return [*ops, Op(pooled, n_out)]


def _attention_ops(model: s.Transformer, tokens: int, outer: int) -> list[Op]:
    """norm1 -> q, k, v -> softmax(q k^T) v -> out_proj (-> dropout) + x, for one row;
    ``outer`` elements (the encoder's input and the tokens) stay alive meanwhile."""
    n, maps = tokens * model.d_model, model.heads * tokens * tokens
    dropped = model.dropout > 0
    # the maps are counted as the math kernel keeps them; fused kernels (flash attention,
    # the CPU's included) keep per-row statistics only, so this bounds both
    # torch's unfused path (odd head counts, training) also copies q, k and v per head;
    # + per-token statistics of the kernels (they dominate when d_model is tiny)
    attention = Op(3 * n, n, FLOAT * (3 * n + maps + 8 * tokens), held=outer + 2 * n,
                   grad_saved=FLOAT * (maps + n) + ((FLOAT + MASK) * maps if dropped else 0))
    ops = [Op(n, n, 2 * FLOAT * tokens, held=outer + n), Op(n, 3 * n, held=outer + n),
           attention, Op(n, n, held=outer + n)]
    ops += [Op(n, n, MASK * n, outer + n, "dropout")] if dropped else []
    return [*ops, Op(2 * n, n, held=outer, kind="add")]


def _feed_forward_ops(model: s.Transformer, tokens: int, outer: int) -> list[Op]:
    """norm2 -> linear1 -> act (-> dropout) -> linear2 (-> dropout) + x, for one row."""
    n, wide, dropped = tokens * model.d_model, tokens * model.ff, model.dropout > 0
    inner = outer + 3 * n  # the layer's input, x and its norm stay alive through the block
    ops = [Op(n, n, 2 * FLOAT * tokens, held=outer + n), Op(n, wide, held=inner),
           Op(wide, wide, held=inner)]
    ops += [Op(wide, wide, MASK * wide, inner, "dropout")] if dropped else []
    ops.append(Op(wide, n, held=inner))
    ops += [Op(n, n, MASK * n, outer + n, "dropout")] if dropped else []
    return [*ops, Op(2 * n, n, held=outer, kind="add")]


def _transformer_ops(model: s.Transformer, shape: tuple[int, ...], n_out: int) -> list[Op]:
    """Embedding, cls and positions, the pre-norm layers, the final norm, pooling, head."""
    (c, steps), d = shape, model.d_model
    tokens = transformer_tokens(model, shape)
    n = tokens * d
    ops = [Op(c * steps, c * steps, kind="pad"), Op(c * steps, steps * d)]
    ops += [Op(steps * d, n, kind="pad")] if model.pooling == "cls" else []
    ops.append(Op(2 * n, n, kind="add"))  # + positions
    for _ in range(model.layers):  # the tokens and the encoder's input stay alive
        ops += _attention_ops(model, tokens, 2 * n) + _feed_forward_ops(model, tokens, 2 * n)
    ops.append(Op(n, n, 2 * FLOAT * tokens))
    ops.append(Op(n, d, kind="mean") if model.pooling == "mean" else Op(d, d, kind="pad"))
    return [*ops, Op(d, n_out)]


def model_ops(model: s.ModelSpec, shape: tuple[int, ...], n_out: int) -> list[Op]:
    """The forward pass of ``models.build_model(model, shape, n_out)``, one row at a time."""
    match model:
        case s.MLP():
            return _mlp_ops(model, math.prod(shape), n_out)
        case s.CNN():
            return _cnn_ops(model, shape, n_out)
        case s.RNN():
            return _rnn_ops(model, shape, n_out)
    return _transformer_ops(model, shape, n_out)


def _input_copies(reg: s.Regularization, shape: tuple[int, ...]) -> int:
    """Bytes per row of the batch and its augmented, noised and mixed copies."""
    n = math.prod(shape)
    total = n * FLOAT  # x[idx]
    if reg.augment is not None:
        k, spatial = reg.augment.shift, shape[1:]
        if k:
            total += shape[0] * math.prod(d + 2 * k for d in spatial) * FLOAT + n * FLOAT
            total += INDEX * (sum(spatial) + 2 * len(spatial) + 2)
        if reg.augment.flip:
            total += 2 * n * FLOAT + 1
    if reg.input_noise > 0:
        total += 2 * n * FLOAT
    if reg.input_mask > 0:  # the uniform draw, the boolean mask and the masked copy
        total += 2 * n * FLOAT + n
    if reg.mixup is not None or reg.cutmix is not None:
        total += 4 * n * FLOAT + INDEX
    return total


def _transient(ops: list[Op]) -> int:
    """Bytes per row of the largest step's input, output and held input."""
    return max(FLOAT * (op.reads + op.writes + op.held) + op.aux_bytes for op in ops)


def train_row_bytes(spec: s.JobSpec, shape: tuple[int, ...], n_out: int) -> int:
    """Peak bytes per row of one training step: saved outputs, backward buffers, inputs."""
    ops = model_ops(spec.model, shape, n_out)
    saved = sum(FLOAT * op.writes + op.aux_bytes + op.grad_saved for op in ops)
    loss = 4 * FLOAT * (n_out + 1) + INDEX  # log-softmax, its gradient, the targets
    rows = saved + _transient(ops) + loss
    return rows + _input_copies(spec.regularization, shape)


def fixed_step_bytes(model: s.ModelSpec) -> int:
    """Bytes a training step allocates whatever its rows (kernels' workspaces)."""
    if isinstance(model, s.RNN) and model.cell == "lstm":
        return LSTM_WORKSPACE_FLOOR * model.layers * (2 if model.bidirectional else 1)
    return 0


def train_batch_bytes(spec: s.JobSpec, shape: tuple[int, ...], n_out: int, rows: int) -> int:
    """Activation bytes of one training step on ``rows`` rows."""
    return rows * train_row_bytes(spec, shape, n_out) + fixed_step_bytes(spec.model)


def eval_row_bytes(spec: s.JobSpec, shape: tuple[int, ...], n_out: int) -> int:
    """Peak bytes per row of an eval forward pass (no grad) and its kept outputs."""
    ops = model_ops(spec.model, shape, n_out)
    return _transient(ops) + 2 * FLOAT * n_out


def eval_chunk_rows(spec: s.JobSpec, shape: tuple[int, ...], n_out: int,
                    batch_rows: int) -> int:
    """Rows per eval forward pass: as many as fit in what a training step may use.

    The API caps the training step's estimate (``max_activation_bytes``), so an eval chunk
    never needs more than max(that step, ``EVAL_MIN_BUDGET``).
    """
    budget = max(train_batch_bytes(spec, shape, n_out, batch_rows), EVAL_MIN_BUDGET)
    return max(1, budget // eval_row_bytes(spec, shape, n_out))


def batch_rows(spec: s.JobSpec, n_train: int) -> int:
    """Rows in a training batch (as ``loop.Trainer`` plans them)."""
    bs = spec.training.batch_size
    return max(1, n_train if bs == "full" else min(int(bs), n_train))


BATCH_NORM_NEEDS_TWO = "batch norm needs batch_size >= 2 (it normalizes over the batch)"


def uses_batch_norm(model: s.ModelSpec) -> bool:
    return isinstance(model, s.MLP | s.CNN) and model.norm == "batch"


@dataclass(frozen=True)
class BatchPlan:
    size: int  # rows per batch
    steps: int  # batches per epoch
    rows_per_epoch: int  # rows trained on per epoch


def batch_plan(spec: s.JobSpec, n_train: int) -> BatchPlan:
    """How an epoch is cut into batches. Batch norm cannot normalize a single row: a lone
    leftover row is skipped, and a batch of one is refused."""
    size = batch_rows(spec, n_train)
    steps = math.ceil(n_train / size)
    if uses_batch_norm(spec.model):
        if size == 1:
            raise DataError(BATCH_NORM_NEEDS_TWO)
        if n_train % size == 1 and steps > 1:
            steps -= 1
    return BatchPlan(size, steps, min(n_train, steps * size))


@dataclass(frozen=True)
class MemoryEstimate:
    """What a job needs in a worker, in bytes (device and host together)."""

    batch_rows: int
    train_batch: int  # activations of one training step
    sharpness_rows: int
    sharpness: int  # Hessian-vector products keep a double-backward graph
    data: int
    parameters: int
    activations: int  # the largest of: training step, eval chunk, sharpness
    eval_outputs: int  # a whole split's outputs, log-probabilities and metrics
    predictions: int  # record_predictions: probabilities on the host and in JSON

    @property
    def total(self) -> int:
        return (self.data + self.parameters + self.activations + self.eval_outputs
                + self.predictions)


def _rows(spec: s.JobSpec, info: DataInfo) -> tuple[int, int, int]:
    """Upper bounds on (training rows, development rows, largest evaluated split)."""
    test = math.ceil(info.n_rows * spec.data.split.test)
    dev = info.n_rows - test
    train = dev if spec.data.rows is not None else train_rows(info, spec.data.split)
    return train, dev, max(train, dev - train if spec.data.rows is None else dev, test)


def memory_estimate(spec: s.JobSpec, info: DataInfo) -> MemoryEstimate:
    info = job_info(spec.task, info)
    shape, n_out = effective_input_shape(spec.data, info), output_dim(info, spec.loss)
    train, dev, largest = _rows(spec, info)
    rows = batch_rows(spec, train)
    step = train_batch_bytes(spec, shape, n_out, rows)
    sharp_rows = min(spec.training.sharpness.max_rows, train) if spec.training.sharpness else 0
    sharp = 3 * train_batch_bytes(spec, shape, n_out, sharp_rows)
    chunk = min(max(step, EVAL_MIN_BUDGET), largest * eval_row_bytes(spec, shape, n_out))
    columns = (2 if n_out == 1 else n_out) if info.task == "classification" else n_out
    kept_dev = dev * info.n_features * FLOAT if spec.training.record_predictions else 0
    return MemoryEstimate(
        batch_rows=rows, train_batch=step, sharpness_rows=sharp_rows, sharpness=sharp,
        data=info.n_rows * (info.n_features + 1) * DATA_BYTES_PER_VALUE + kept_dev,
        parameters=parameter_count(spec, info) * FLOAT * PARAMETER_COPIES,
        activations=max(step, chunk, sharp),
        eval_outputs=largest * (3 * FLOAT * n_out + 4 * INDEX),
        predictions=(info.n_rows * columns * PREDICTION_BYTES_PER_VALUE
                     if spec.training.record_predictions else 0))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as the limits are usually set)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------- tensor shapes
#
# The state-dict entries ``models.build_model`` creates, by name, without torch: the API
# checks a warm start (``model.init_from``) against a checkpoint's safetensors header.
# tests/training/test_warm_start.py keeps them equal to the real modules.

Shapes = dict[str, tuple[int, ...]]


def _norm_state(prefix: str, norm: s.Norm, width: int, *, conv: bool) -> Shapes:
    if norm == "none" or (norm == "instance" and not conv):
        return {}
    out: Shapes = {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}
    if norm == "batch":
        out |= {f"{prefix}.running_mean": (width,), f"{prefix}.running_var": (width,),
                f"{prefix}.num_batches_tracked": ()}
    return out


def _mlp_state(model: s.MLP, n_in: int) -> tuple[Shapes, int]:
    out: Shapes = {}
    for i, width in enumerate(model.hidden):
        out |= {f"blocks.{i}.linear.weight": (width, n_in), f"blocks.{i}.linear.bias": (width,)}
        out |= _norm_state(f"blocks.{i}.norm", model.norm, width, conv=False)
        n_in = width
    return out, n_in


def _conv_state(prefix: str, model: s.CNN, c_in: int, c_out: int, dims: int) -> Shapes:
    out: Shapes = {f"{prefix}.weight": (c_out, c_in, *[model.kernel_size] * dims)}
    return out | ({f"{prefix}.bias": (c_out,)} if model.norm == "none" else {})


def _cnn_state(model: s.CNN, shape: tuple[int, ...]) -> tuple[Shapes, int]:
    """Stage i is Sequential(conv, norm, act, blocks...)."""
    out: Shapes = {}
    dims, c_in = len(shape) - 1, shape[0]
    for i, c in enumerate(model.channels):
        out |= _conv_state(f"features.{i}.0", model, c_in, c, dims)
        out |= _norm_state(f"features.{i}.1", model.norm, c, conv=True)
        for b in range(model.blocks_per_stage if model.residual else 0):
            block = f"features.{i}.{3 + b}"
            for j in (1, 2):
                out |= _conv_state(f"{block}.conv{j}", model, c, c, dims)
                out |= _norm_state(f"{block}.norm{j}", model.norm, c, conv=True)
        c_in = c
    return out, c_in


def _rnn_state(model: s.RNN, shape: tuple[int, ...]) -> tuple[Shapes, int]:
    out: Shapes = {}
    rows, dirs = GATES[model.cell] * model.hidden, 2 if model.bidirectional else 1
    n_in = shape[0]
    for layer in range(model.layers):
        for suffix in ("", "_reverse")[:dirs]:
            out |= {f"rnn.weight_ih_l{layer}{suffix}": (rows, n_in),
                    f"rnn.weight_hh_l{layer}{suffix}": (rows, model.hidden),
                    f"rnn.bias_ih_l{layer}{suffix}": (rows,),
                    f"rnn.bias_hh_l{layer}{suffix}": (rows,)}
        n_in = dirs * model.hidden
    return out, n_in


def _transformer_state(model: s.Transformer, shape: tuple[int, ...]) -> tuple[Shapes, int]:
    d, ff = model.d_model, model.ff
    out: Shapes = {"cls": (1, 1, d)} if model.pooling == "cls" else {}
    if model.positional == "learned":
        out["position"] = (1, transformer_tokens(model, shape), d)
    out |= {"embed.weight": (d, shape[0]), "embed.bias": (d,)}
    for i in range(model.layers):
        layer = f"encoder.layers.{i}"
        out |= {f"{layer}.self_attn.in_proj_weight": (3 * d, d),
                f"{layer}.self_attn.in_proj_bias": (3 * d,),
                f"{layer}.self_attn.out_proj.weight": (d, d),
                f"{layer}.self_attn.out_proj.bias": (d,),
                f"{layer}.linear1.weight": (ff, d), f"{layer}.linear1.bias": (ff,),
                f"{layer}.linear2.weight": (d, ff), f"{layer}.linear2.bias": (d,)}
        for norm in ("norm1", "norm2"):
            out |= {f"{layer}.{norm}.weight": (d,), f"{layer}.{norm}.bias": (d,)}
    return out | {"encoder.norm.weight": (d,), "encoder.norm.bias": (d,)}, d


def state_shapes(model: s.ModelSpec, shape: tuple[int, ...], n_out: int) -> Shapes:
    """Every state-dict entry (parameters and buffers) and its shape, in module order."""
    match model:
        case s.MLP():
            body, width = _mlp_state(model, math.prod(shape))
        case s.CNN():
            body, width = _cnn_state(model, shape)
        case s.RNN():
            body, width = _rnn_state(model, shape)
        case _:
            body, width = _transformer_state(model, shape)
    return body | {"head.weight": (n_out, width), "head.bias": (n_out,)}
