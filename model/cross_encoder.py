"""sentence-transformers' ``CrossEncoder`` interface on turborank's engine.

Code written for ``sentence_transformers.CrossEncoder`` runs unchanged except for the import:
``predict`` returns a NumPy array (one float32 score per pair, a scalar for one pair), ``rank``
returns ``[{"corpus_id", "score"[, "text"]}]`` best first. Scores are sigmoid(logit) by default, as
sentence-transformers does for a one-label model; ``activation_fn=torch.nn.Identity()`` gives the
raw logits. It is a ``torch.nn.Module`` as sentence-transformers' is (its parameters are the
model's; ``eval()``, ``parameters()``, ``state_dict()`` work).

Keywords: the hub options go to the download, the tokenizer options may set the length (and are
refused where they would change the tokens); sentence-transformers' options with no effect on
turborank (``config_kwargs``, ``num_workers``, ...) are accepted with a warning naming them;
``trust_remote_code`` is accepted silently (turborank runs no code from the checkpoint, so there is
nothing to allow); any other keyword is a TypeError naming it, with the nearest known name, as a
misspelt keyword is to any Python function. Features it lacks (training, saving, prompts, several
labels, another dtype after loading) are errors naming the feature.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from turborank.config import read_config_json
from turborank.ranking import check_rank_arguments, ranked_results
from turborank.reranker import DEFAULT_MODEL, Reranker

# sentence-transformers' keywords (2.x to 6.x) that change nothing here: the hub and cache options
# (the checkpoint is found as turborank finds it), tokenizer / config / model loading options,
# data-loading workers.
_NO_EFFECT = {
    "__init__": {"model_kwargs", "config_kwargs", "model_card_data", "config_args", "classifier_dropout"},
    "predict": {"num_workers", "pool", "chunk_size"},
    "rank": {"num_workers"},
}
# Tokenizer options (sentence-transformers passes them to AutoTokenizer) known to change no token
# (loading, decoding; ``max_length`` is only a default for calls that pass none): anything else in
# ``tokenizer_kwargs`` past these, ``model_max_length`` and ``truncation_side`` may change the
# tokens, and is refused rather than ignored.
_TOKENIZER_LOADING = {"use_fast", "padding_side", "trust_remote_code", "revision", "cache_dir", "token"}
_TOKENIZER_LOADING |= {"local_files_only", "use_auth_token", "clean_up_tokenization_spaces", "max_length"}
# Accepted without a word: a permission to run the checkpoint's code, which turborank never runs.
_ACCEPTED = {"trust_remote_code"}
# Options that would change the scores in sentence-transformers: refused when set.
_REFUSED = dict.fromkeys(
    ("prompt", "prompt_name", "prompts", "default_prompt_name"),
    "prompts are not supported: the rerankers score (query, document) as given",
)


def _renamed(options: dict[str, Any], old_name: str, activation_fn: Any) -> Any:
    """``activation_fn``, or the value given under sentence-transformers' older name for it."""
    if old_name not in options:
        return activation_fn
    value = options.pop(old_name)
    if activation_fn is not None and value is not None and value is not activation_fn:
        raise ValueError(f"activation_fn and {old_name} (its older name) disagree; give one")
    return activation_fn if value is None else value


def _check_keywords(where: str, method: Callable[..., Any], options: dict[str, Any]) -> None:
    """Warn about sentence-transformers' no-effect options; raise for one that would change the
    scores, and a TypeError for a keyword nobody knows (a misspelling), with the nearest name."""
    for name, value in options.items():
        if name in _REFUSED and value is not None and value != {}:  # None and {} ask for nothing
            raise _not_here(f"{where}({name}=...)", _REFUSED[name])
    unknown = sorted(set(options) - _NO_EFFECT[where] - _ACCEPTED - set(_REFUSED))
    if unknown:
        known = [p for p in inspect.signature(method).parameters if p not in ("self", "kwargs")]
        known += sorted(_NO_EFFECT[where])
        near = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise TypeError(f"CrossEncoder.{where}() got an unexpected keyword argument {unknown[0]!r}{hint}")
    ignored = sorted(set(options) & _NO_EFFECT[where])
    if ignored:
        warnings.warn(
            f"CrossEncoder.{where}: ignoring {', '.join(ignored)} (sentence-transformers options "
            "with no effect on turborank)",
            UserWarning,
            stacklevel=3,
        )


def _hub_options(options: dict[str, Any]) -> dict[str, Any]:
    """sentence-transformers' hub and cache keywords as huggingface_hub's download options."""
    caches = [options.pop(name) for name in ("cache_folder", "cache_dir") if name in options]
    tokens = [options.pop(name) for name in ("token", "use_auth_token") if name in options]
    hub = {
        "cache_dir": next((c for c in caches if c is not None), None),
        "token": next((t for t in tokens if t is not None), None),
        "local_files_only": options.pop("local_files_only", False) or None,
    }
    return {name: value for name, value in hub.items() if value is not None}


def _length_from_tokenizer_options(options: dict[str, Any], max_length: int | None) -> int | None:
    """``max_length``, else the ``model_max_length`` sentence-transformers' tokenizer options set
    (``tokenizer_kwargs``; ``tokenizer_args`` before 4.x, ``processor_kwargs`` from 5.x), which
    decides where it cuts a pair. Options that would change the tokens are refused."""
    asked: dict[str, Any] = {}
    for name in ("tokenizer_args", "tokenizer_kwargs", "processor_kwargs"):
        asked.update(options.pop(name, None) or {})
    side = asked.pop("truncation_side", "right")
    if side != "right":
        raise _not_here(
            f"__init__(tokenizer_kwargs={{'truncation_side': {side!r}}})", "pairs are cut at the end"
        )
    limit = asked.pop("model_max_length", None)
    changing = sorted(set(asked) - _TOKENIZER_LOADING)
    if changing:
        raise ValueError(
            f"tokenizer_kwargs {changing}: turborank tokenises with the checkpoint's tokenizer.json as "
            "saved; options that change its tokens are not supported"
        )
    return max_length if max_length is not None else limit


def _saved_activation(config_file: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The default activation sentence-transformers saved in config.json (4.x on:
    ``sentence_transformers.activation_fn``; 2.x/3.x: ``sbert_ce_default_activation_function``),
    else Sigmoid. Only torch's classes are built: a path outside torch is code, which
    sentence-transformers too runs only with trust_remote_code."""
    raw = read_config_json(config_file)
    saved = raw.get("sentence_transformers")
    path = (saved.get("activation_fn") if isinstance(saved, dict) else None) or raw.get(
        "sbert_ce_default_activation_function"
    )
    if not path:
        return torch.nn.Sigmoid()
    module, _, name = str(path).rpartition(".")
    if not module.startswith("torch."):
        warnings.warn(f"{config_file}: activation {path!r} is not torch's; applying Sigmoid", UserWarning, 3)
        return torch.nn.Sigmoid()
    return getattr(importlib.import_module(module), name)()


def _listed(values: Any) -> Any:
    """A NumPy array as a list (its rows as lists); anything else as given."""
    return (
        values.tolist()
        if not isinstance(values, (str, list, tuple)) and hasattr(values, "tolist")
        else values
    )


def _dtype_of(dtype: str | torch.dtype) -> object:
    """A dtype as torch names it ("bfloat16" and torch.bfloat16 alike); anything else as given."""
    return getattr(torch, dtype, dtype) if isinstance(dtype, str) else dtype


def _not_here(feature: str, instead: str) -> NotImplementedError:
    return NotImplementedError(
        f"turborank.CrossEncoder.{feature} is a sentence-transformers feature it does not have; {instead}"
    )


# sentence-transformers attributes with no counterpart here, and what to use instead.
_ELSEWHERE = {
    "tokenizer": "it tokenises with the checkpoint's tokenizer.json itself (see .reranker.encode)",
    "model": "the torch module is .reranker.module (turborank's packed JinaBERT, not a transformers model)",
    "config": "the checkpoint's configuration is .reranker.config (a JinaBertConfig)",
    "fit": "training is not supported: turborank runs the rerankers for inference only",
    "old_fit": "training is not supported: turborank runs the rerankers for inference only",
    "save": "saving is not supported: the checkpoint directory is the model",
    "save_pretrained": "saving is not supported: the checkpoint directory is the model",
}


class CrossEncoder(torch.nn.Module):
    """A JinaBERT reranker behind sentence-transformers' ``CrossEncoder`` signature, as a
    ``torch.nn.Module`` whose one child is the model (``.reranker.module``).

    Args:
        model_name_or_path: hub id or local checkpoint directory.
        num_labels: must be None or 1 (the rerankers have a one-logit classifier).
        max_length: tokens per pair (default: the model maximum, 8,192).
        activation_fn: applied to the logits by ``predict`` (default ``torch.nn.Sigmoid()``).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        revision: hub revision.
        backend: sentence-transformers' inference backend; only "torch" exists here (turborank picks
            Triton kernels on CUDA and PyTorch on CPU by itself).
        dtype: turborank's run dtype (None: bf16 on CUDA, fp32 on CPU).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | None = None,
        revision: str | None = None,
        backend: str = "torch",
        *,
        dtype: str | torch.dtype | None = None,
        slopes: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if "model_name" in kwargs:  # the first parameter's name in sentence-transformers 2.x/3.x
            if model_name_or_path != DEFAULT_MODEL:
                raise TypeError("model_name_or_path and model_name (its older name) given both; give one")
            model_name_or_path = kwargs.pop("model_name")
        # A dtype asked for the sentence-transformers way runs in that dtype, not silently in fp32
        # (automodel_args: model_kwargs' name before 4.x).
        model_kwargs = {
            **(kwargs.pop("automodel_args", None) or {}),
            **(kwargs.pop("model_kwargs", None) or {}),
        }
        for key in ("torch_dtype", "dtype"):  # transformers' older and newer names
            asked = model_kwargs.pop(key, None)
            if asked is None or asked == "auto":
                continue
            if dtype is not None and _dtype_of(dtype) != _dtype_of(asked):
                raise ValueError(f"dtype={dtype!r} and model_kwargs {key}={asked!r} disagree")
            dtype = asked
        if model_kwargs:
            kwargs["model_kwargs"] = model_kwargs
        # sentence-transformers 2.x/3.x named the activation default_activation_function.
        activation_fn = _renamed(kwargs, "default_activation_function", activation_fn)
        hub_options = _hub_options(kwargs)
        max_length = _length_from_tokenizer_options(kwargs, max_length)
        _check_keywords("__init__", CrossEncoder.__init__, kwargs)
        if num_labels not in (None, 1):
            raise ValueError(f"num_labels={num_labels!r}: the JinaBERT rerankers have one output label")
        if backend != "torch":
            raise ValueError(
                f"backend={backend!r}: turborank runs its own kernels (Triton on CUDA, PyTorch on CPU); "
                "use backend='torch'"
            )
        self.reranker = Reranker.from_pretrained(
            model_name_or_path,
            device=device,
            dtype=dtype,
            slopes=slopes,
            revision=revision,
            hub_options=hub_options,
        )
        # The model as this module's child: parameters(), state_dict() and train/eval reach it.
        self.encoder = self.reranker.module
        self.max_length = self.reranker.check_max_length(max_length)
        if activation_fn is None:
            activation_fn = _saved_activation(self.reranker.checkpoint_directory / "config.json")
        self.activation_fn = activation_fn
        self.num_labels = 1

    @property
    def device(self) -> torch.device:
        return self.reranker.device

    @property
    def max_seq_length(self) -> int:
        """Tokens per pair (sentence-transformers' name for ``max_length``); setting it takes effect
        on the next ``predict`` and is checked against the model's range."""
        return self.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.max_length = self.reranker.check_max_length(value)

    def get_max_seq_length(self) -> int:
        return self.max_length

    def to(self, *args: Any, **kwargs: Any) -> CrossEncoder:  # type: ignore[override]
        """Move the model to a device (its ops follow it: Triton on CUDA, PyTorch on CPU). The dtype
        is chosen at load: a dtype here is an error, not a cast behind the ops' back."""
        # non_blocking, copy and memory_format change nothing for a move of the whole model.
        targets = [*args, *(v for k, v in kwargs.items() if k in ("device", "dtype", "tensor"))]
        if len(targets) != 1 or isinstance(targets[0], (torch.dtype, torch.Tensor)):
            raise _not_here(
                f"to({', '.join(map(str, targets))})",
                "only a device moves it; the dtype is chosen at load: CrossEncoder(..., dtype=...)",
            )
        self.reranker.to(targets[0])
        self.encoder = self.reranker.module
        return self

    def cpu(self) -> CrossEncoder:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> CrossEncoder:
        return self.to(device if isinstance(device, (str, torch.device)) else f"cuda:{device or 0}")

    def half(self) -> CrossEncoder:
        raise _not_here("half()", "the dtype is chosen at load: CrossEncoder(..., dtype='float16')")

    def float(self) -> CrossEncoder:
        raise _not_here("float()", "the dtype is chosen at load: CrossEncoder(..., dtype='float32')")

    def bfloat16(self) -> CrossEncoder:
        raise _not_here("bfloat16()", "the dtype is chosen at load: CrossEncoder(..., dtype='bfloat16')")

    def double(self) -> CrossEncoder:
        raise _not_here("double()", "the rerankers run in float32, bfloat16 or float16")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise _not_here("forward", "score pairs with predict() or rank()")

    def __getattr__(self, name: str) -> Any:
        # nn.Module's lookup of parameters, buffers and children first; past that the name is one
        # the class does not have: say what to use instead of a bare error.
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        if name in _ELSEWHERE:
            raise AttributeError(f"turborank.CrossEncoder has no {name!r}: {_ELSEWHERE[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def predict(
        self,
        inputs: Sequence[Sequence[str]] | Sequence[str] | Any = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        *,
        sentences: Sequence[Sequence[str]] | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Scores of (query, document) pairs in input order.

        Args:
            inputs: a list of pairs (or a NumPy array of them, shape [n, 2]), or one pair (then one
                score comes back, not a list); ``sentences=`` is its older name.
            activation_fn: overrides the constructor's for this call.
            apply_softmax: a softmax over the labels; with one label it changes nothing (as in
                sentence-transformers).
            convert_to_numpy: float32 NumPy array (the default); convert_to_tensor: a torch tensor;
                neither: a list of 0-d tensors, as sentence-transformers returns.
        Returns:
            [n] scores, or one for one pair.
        """
        activation_fn = _renamed(kwargs, "activation_fct", activation_fn)  # sentence-transformers 3.x
        _check_keywords("predict", CrossEncoder.predict, kwargs)
        if (inputs is None) == (sentences is None):
            raise TypeError("predict takes its pairs once: as the first argument (inputs=) or sentences=")
        inputs = _listed(sentences if inputs is None else inputs)
        single = isinstance(inputs, (list, tuple)) and len(inputs) == 2 and isinstance(inputs[0], str)
        # Lists, tuples and NumPy rows become tuples; anything else is left for as_pairs to refuse:
        # tuple() would score a string's characters, a dict's keys, a set's items in hash order.
        pairs = (
            [inputs]
            if single
            else [tuple(p) if isinstance(p, (list, tuple)) else p for p in map(_listed, inputs)]
        )
        logits = self.reranker.predict(
            pairs,
            activation=False,
            batch_size=batch_size,
            max_length=self.max_length,
            show_progress_bar=show_progress_bar,
        )
        activation = activation_fn if activation_fn is not None else self.activation_fn
        # As sentence-transformers applies it: to the [n, 1] logits of a one-label model, so a
        # softmax over the last dimension sees one pair's logit, not the others'.
        scores = activation(torch.tensor(logits, dtype=torch.float32).unsqueeze(-1))
        if scores.dim() == 2 and scores.shape[-1] == 1:
            scores = scores[:, 0]
        if apply_softmax and scores.dim() > 1:
            scores = torch.softmax(scores, dim=-1)
        if convert_to_tensor:  # on the model's device, as sentence-transformers returns it
            scores = scores.to(self.device)
            return scores[0] if single else scores
        if convert_to_numpy:
            array = scores.numpy()
            return array[0] if single else array
        values = list(scores.unbind()) if len(scores) else []
        return values[0] if single else values

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Documents best first: [{"corpus_id": index, "score": score[, "text": document]}], cut to
        ``top_k`` (0 gives an empty list, as in sentence-transformers). Ties keep input order. A
        score is what ``predict`` gives with the same conversions: a NumPy float32 by default, a
        0-d tensor with ``convert_to_tensor`` (or with both conversions off)."""
        activation_fn = _renamed(kwargs, "activation_fct", activation_fn)  # sentence-transformers 3.x
        _check_keywords("rank", CrossEncoder.rank, kwargs)
        documents = _listed(documents)
        check_rank_arguments(documents, top_k, smallest_top_k=0)  # 0: an empty list, as sentence-transformers
        scores = self.predict(
            [(query, document) for document in documents],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=activation_fn,
            apply_softmax=apply_softmax,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )
        values = scores.cpu().tolist() if isinstance(scores, torch.Tensor) else [float(s) for s in scores]
        results = ranked_results(values, documents, top_k, return_documents)
        for item in results:
            item["score"] = scores[item["corpus_id"]]
        return results
