"""What a loss may name: the allow-list tables behind ``losses.static_check``.

A loss is arithmetic on four tensors and a float. Everything it may reach is listed here, so a name
that is not listed is refused, whatever new routes to files, processes or code compilation a future
torch release adds. Each entry was chosen because losses need it (the DiscoPOP paper's discovered
losses, the reference losses in ``proposals/``, the evolutionary proposer's operators, the usual
LLM idioms); none reads or writes files, the environment, global torch state or autograd
internals, or compiles or deserialises code. ``tests/test_allowlist.py`` asserts every entry exists.
"""

from __future__ import annotations

# The modules a loss may import, by the name they are imported under.
MODULES = ("torch", "torch.nn.functional", "math")

_ELEMENTWISE = {
    # exponentials and logarithms
    "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "logit", "xlogy", "logaddexp", "logaddexp2",
    # squashing and rectifying maps
    "sigmoid", "tanh", "relu", "erf", "erfc", "softmax", "log_softmax", "logsumexp",
    # powers and roots
    "pow", "sqrt", "rsqrt", "square", "reciprocal", "hypot",
    # sign, magnitude, rounding
    "abs", "neg", "sign", "sgn", "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder",
    # trigonometric and hyperbolic
    "sin", "cos", "atan", "atan2", "sinh", "cosh", "asinh",
    # clipping, selection, blending
    "clamp", "clip", "minimum", "maximum", "fmin", "fmax", "where", "lerp", "nan_to_num",
    # the four operators spelled as functions
    "add", "sub", "mul", "div", "true_divide",
    # comparisons and logic (masks)
    "lt", "le", "gt", "ge", "eq", "ne", "logical_and", "logical_or", "logical_not", "logical_xor",
    "isnan", "isinf", "isfinite", "signbit",
}  # fmt: skip
_REDUCTIONS = {
    # batch statistics (quantile-style losses use these)
    "mean", "sum", "prod", "std", "var", "median", "quantile", "amin", "amax", "min", "max",
    "argmin", "argmax", "cumsum", "norm", "all", "any", "count_nonzero", "sort", "argsort", "topk",
}  # fmt: skip
_SHAPES = {
    # reshaping the per-example tensors
    "reshape", "flatten", "squeeze", "unsqueeze", "transpose", "t",
    "matmul", "mm", "dot", "outer", "detach",
}  # fmt: skip

# torch.X. Plus the elementwise maps, reductions and shape functions above.
TORCH = {
    *_ELEMENTWISE, *_REDUCTIONS, *_SHAPES,
    # combining per-example terms
    "stack", "cat",
    # new tensors from numbers or from an input's shape
    "tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace",
    "zeros_like", "ones_like", "full_like", "empty_like",
    # noise (legal, but the numeric checks refuse a loss whose value is not deterministic)
    "rand_like", "randn_like",
    # dtypes (for .to(...) and comparisons) and their numeric limits (torch.finfo(x.dtype).eps)
    "float16", "bfloat16", "float32", "float64", "float", "double", "half", "int32", "int64", "long", "bool",
    "finfo", "iinfo",
    # numeric constants
    "pi", "e", "inf", "nan",
    # tensor types, for annotations
    "Tensor", "FloatTensor",
}  # fmt: skip

# F.X (torch.nn.functional).
FUNCTIONAL = {
    # activations
    "logsigmoid", "softplus", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
    "sigmoid", "tanh", "hardtanh", "hardsigmoid", "hardswish", "softsign", "tanhshrink", "softshrink",
    "hardshrink", "threshold", "softmax", "softmin", "log_softmax", "normalize",
    # ready-made losses a preference loss is often built from
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "smooth_l1_loss",
    "huber_loss", "soft_margin_loss", "margin_ranking_loss", "kl_div",
}  # fmt: skip

# math.X: scalar helpers and constants (module-level constants may use the constants).
MATH = {
    "log", "log1p", "log2", "log10", "exp", "expm1", "sqrt", "pow", "fabs", "floor", "ceil",
    "tanh", "sinh", "cosh", "atan", "sin", "cos", "erf", "erfc", "lgamma", "gamma", "hypot", "copysign",
    "isfinite", "isnan", "isinf",
    "pi", "e", "tau", "inf", "nan",
}  # fmt: skip
MATH_CONSTANTS = {"pi", "e", "tau", "inf", "nan"}

TABLES = {"torch": TORCH, "torch.nn.functional": FUNCTIONAL, "math": MATH}

# Methods and attributes of tensors (and of the few values torch functions return: dtypes, finfo).
# Out-of-place only: in-place methods (``add_``) mutate the caller's tensors.
TENSOR_METHODS = {
    *_ELEMENTWISE, *_REDUCTIONS, *_SHAPES,
    # dtype conversion and copies
    "float", "double", "half", "long", "int", "bool", "to", "type_as", "clone", "contiguous",
    # shape helpers
    "view", "view_as", "expand", "expand_as", "size", "dim", "numel", "item",
    "masked_fill", "gather", "new_zeros", "new_ones", "new_full", "new_tensor", "is_floating_point",
    # attributes
    "shape", "dtype", "device", "ndim", "T",
}  # fmt: skip
# Attributes of the numeric-limit objects ``torch.finfo`` / ``torch.iinfo`` return.
INFO_ATTRS = {"eps", "tiny", "max", "min", "resolution", "smallest_normal", "bits"}
VALUE_ATTRS = TENSOR_METHODS | INFO_ATTRS

# Builtins a loss may call; the module runs with exactly these (``losses.load_loss``).
BUILTINS = {
    "abs", "min", "max", "pow", "round", "sum",  # scalar arithmetic on Python numbers
    "float", "int", "bool",  # conversions (beta arrives as a float; masks become weights)
    "len", "range", "enumerate", "zip",  # bounded loops over a few terms
    "list", "tuple",  # collecting terms for torch.stack / torch.cat
}  # fmt: skip
