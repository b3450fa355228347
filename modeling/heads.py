"""The six task models on top of `XLMRobertaXLModel`, their heads and the one loss function.

Owns `compute_loss` (every task's loss), the head modules (`LMHead`, `ClassificationHead`), the
shared task-model base (backbone under ``.roberta``, head initialisation, backbone call) and the
task models: masked LM, causal LM (with ``generate``, `modeling.generation`),
sequence classification / regression, multiple choice, token classification and extractive
question answering. Parameter names are HF's (``roberta.*``, ``lm_head.*``, ``classifier.*``,
``qa_outputs.*``). Shapes: B = batch, S = sequence length, H = hidden size, V = vocabulary,
C = number of labels or choices.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import XLMRobertaXLConfig
from .generation import GenerationConfig, GenerationMixin
from .model import XLMRobertaXLModel
from .outputs import (
    BackboneOutput,
    Cache,
    CausalLMOutput,
    MaskedLMOutput,
    ModelOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    task_tuple,
)
from .pretrained import XLMRobertaXLPreTrainedModel

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CAUSAL_LM = "causal_lm"


def compute_loss(logits: Tensor, labels: Tensor, *, problem_type: str, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The loss of every task model (mean over the counted items).

    - ``"regression"``: MSE; logits (B, C), labels (B, C) or, for C = 1, (B,).
    - ``"multi_label_classification"``: BCE with logits; labels (B, C) of 0/1.
    - ``"single_label_classification"``: cross-entropy over the last axis of logits (..., C)
      against integer labels (...), skipping ``ignore_index``.
    - ``"causal_lm"``: cross-entropy (in float32, as HF) of logits (B, S, V) at position i
      against labels (B, S) at i + 1, skipping ``ignore_index``.
    """
    if problem_type == "regression":
        if logits.shape[-1] == 1:
            logits, labels = logits.squeeze(), labels.squeeze()
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if problem_type == CAUSAL_LM:
        logits, labels = logits[:, :-1].float(), labels[:, 1:]
    elif problem_type != "single_label_classification":
        raise ValueError(f"unknown problem_type {problem_type!r}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)


# ---------------------------------------------------------------------------------- heads
class LMHead(nn.Module):
    """``decoder(LN(gelu(dense(h))))`` with the decoder weight tied to the word embeddings (unless
    ``share_weight=False``, HF's ``tie_word_embeddings=False``) and its bias shared with ``bias``
    (HF keys ``lm_head.{dense,layer_norm,decoder}``, ``lm_head.bias``). (B, S, H) -> (B, S, V)."""

    def __init__(self, *, word_embeddings: nn.Embedding, layer_norm_eps: float, share_weight: bool = True) -> None:
        super().__init__()
        vocab_size, hidden_size = word_embeddings.weight.shape
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        # built on meta: the weight and bias are replaced by the shared (or own) ones right away
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False, device="meta")
        self.bias = nn.Parameter(torch.zeros(vocab_size, device=word_embeddings.weight.device))
        self.tie(word_embeddings, share_weight=share_weight)

    def tie(self, word_embeddings: nn.Embedding, *, share_weight: bool = True) -> None:
        """Share the decoder weight with ``word_embeddings`` (or, with ``share_weight=False``, give
        the decoder a weight of its own, left to the model's initialisation) and the decoder bias
        with ``bias`` (cut or padded with zeros to the vocabulary size first, as HF does after a
        resize)."""
        rows = word_embeddings.weight.shape[0]
        if self.bias.shape[0] != rows:
            kept = self.bias.detach()[:rows]
            self.bias = nn.Parameter(F.pad(kept, (0, rows - kept.shape[0])), requires_grad=self.bias.requires_grad)
        weight = self.decoder.weight
        if share_weight:
            self.decoder.weight = word_embeddings.weight
        elif weight is word_embeddings.weight or (weight.is_meta and not word_embeddings.weight.is_meta):
            self.decoder.weight = nn.Parameter(torch.empty_like(word_embeddings.weight))
        self.decoder.bias = self.bias
        self.decoder.out_features = rows

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden_states))))


class ClassificationHead(nn.Module):
    """Sentence head on the ``<s>`` state: dropout → dense → tanh → dropout → out_proj.
    (B, S, H) -> (B, C)."""

    def __init__(self, *, hidden_size: int, num_labels: int, dropout_prob: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: Tensor) -> Tensor:
        x = self.dropout(hidden_states[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


# ---------------------------------------------------------------------------------- task models
OptTensor = Optional[Tensor]
OptBool = Optional[bool]
#: the forward arguments a task model hands to the backbone unchanged
_BACKBONE_ARGUMENTS = ("attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                       "encoder_hidden_states", "encoder_attention_mask", "past_key_values", "use_cache",
                       "output_attentions", "output_hidden_states", "skip_padding")


class XLMRobertaXLTaskModel(XLMRobertaXLPreTrainedModel):
    """Base of the task models: the backbone as ``.roberta`` and the head(s) beside it.

    Subclasses build their head modules, then call `post_init` to tie and initialise them. Their
    ``forward`` has HF's signature (named arguments, in HF's order: HF's Trainer reads it to pick
    dataset columns) plus ours, ``skip_padding`` (see `XLMRobertaXLModel.forward`); the backbone
    arguments among them go to the backbone unchanged.
    """

    add_pooling_layer = False

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.roberta = XLMRobertaXLModel(config, add_pooling_layer=self.add_pooling_layer)

    def post_init(self) -> None:
        """Tie weights and initialise every module beside the (already initialised) backbone."""
        self.tie_weights()
        self.init_weights(modules=[module for name, module in self.named_children() if name != "roberta"])

    def forward(self, input_ids: OptTensor = None, attention_mask: OptTensor = None, token_type_ids: OptTensor = None,
                position_ids: OptTensor = None, head_mask: OptTensor = None, inputs_embeds: OptTensor = None,
                labels: OptTensor = None, output_attentions: OptBool = None, output_hidden_states: OptBool = None,
                return_dict: OptBool = None, skip_padding: bool = False) -> Any:
        """HF's forward of the sequence and token classifiers: the backbone, then `_head`."""
        out = self._encode(input_ids, locals())
        return self._result(self._head(out, labels=labels, attention_mask=attention_mask), out, return_dict)

    def _head(self, out: BackboneOutput, *, labels: OptTensor, attention_mask: OptTensor) -> ModelOutput:
        """The task's result from the backbone output ``out`` (with the loss when ``labels`` are given)."""
        raise NotImplementedError(f"{type(self).__name__} defines its own forward")

    def _encode(self, input_ids: Optional[Tensor], arguments: Dict[str, Any]) -> BackboneOutput:
        """Run the backbone on ``input_ids`` and the backbone arguments among ``arguments`` (a
        forward's ``locals()``)."""
        inputs = {name: arguments[name] for name in _BACKBONE_ARGUMENTS if name in arguments}
        return self.roberta(input_ids, return_dict=True, **inputs)

    def _result(self, result: ModelOutput, backbone: BackboneOutput, return_dict: Optional[bool]) -> Any:
        """``result``, or HF's tuple of it with ``return_dict=False`` (`task_tuple`)."""
        return result if self._return_dict(return_dict) else task_tuple(result, backbone)


class _LanguageModel(XLMRobertaXLTaskModel):
    """Shared part of the masked and causal LMs: the `LMHead`, tied to the word embeddings unless
    ``config.tie_word_embeddings`` is False."""

    _tied_weights_keys = ("lm_head.decoder.weight", "lm_head.decoder.bias")

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        if not config.tie_word_embeddings:  # HF's untied decoder: only its bias stays shared
            self._tied_weights_keys = ("lm_head.decoder.bias",)
        self.lm_head = LMHead(word_embeddings=self.roberta.get_input_embeddings(), layer_norm_eps=config.layer_norm_eps,
                              share_weight=config.tie_word_embeddings)
        self.post_init()

    def tie_weights(self) -> None:
        self.lm_head.tie(self.roberta.get_input_embeddings(), share_weight=self.config.tie_word_embeddings)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """As HF: the new decoder's bias becomes the head's bias; its weight is tied to the word
        embeddings at the next `tie_weights`."""
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias


class XLMRobertaXLForMaskedLM(_LanguageModel):
    """Masked language model: logits (B, S, V); loss = cross-entropy at labels != -100."""

    def forward(self, input_ids: OptTensor = None, attention_mask: OptTensor = None,
                token_type_ids: OptTensor = None, position_ids: OptTensor = None, head_mask: OptTensor = None,
                inputs_embeds: OptTensor = None, encoder_hidden_states: OptTensor = None,
                encoder_attention_mask: OptTensor = None, labels: OptTensor = None,
                output_attentions: OptBool = None, output_hidden_states: OptBool = None,
                return_dict: OptBool = None, skip_padding: bool = False) -> Any:
        out = self._encode(input_ids, locals())
        logits = self.lm_head(out.last_hidden_state)
        loss = None if labels is None else compute_loss(logits, labels, problem_type="single_label_classification")
        result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return self._result(result, out, return_dict)


class XLMRobertaXLForCausalLM(_LanguageModel, GenerationMixin):
    """Left-to-right language model (use with ``config.is_decoder=True``): logits (B, S, V);
    loss predicts labels[i + 1] from position i. Returns the key/value cache; ``generate``
    continues prompts (`modeling.generation`), with ``generation_config`` as its defaults."""

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.generation_config = GenerationConfig.from_model_config(config)

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def forward(self, input_ids: OptTensor = None, attention_mask: OptTensor = None,
                token_type_ids: OptTensor = None, position_ids: OptTensor = None, head_mask: OptTensor = None,
                inputs_embeds: OptTensor = None, encoder_hidden_states: OptTensor = None,
                encoder_attention_mask: OptTensor = None, labels: OptTensor = None,
                past_key_values: Optional[Cache] = None, use_cache: OptBool = None,
                output_attentions: OptBool = None, output_hidden_states: OptBool = None,
                return_dict: OptBool = None, skip_padding: bool = False) -> Any:
        if labels is not None:
            use_cache = False
        out = self._encode(input_ids, locals())
        logits = self.lm_head(out.last_hidden_state)
        loss = None if labels is None else compute_loss(logits, labels, problem_type=CAUSAL_LM)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return self._result(result, out, return_dict)


class XLMRobertaXLForSequenceClassification(XLMRobertaXLTaskModel):
    """Sequence classification / regression on ``<s>``: logits (B, C).

    The loss follows ``config.problem_type``; when unset it is inferred as HF does (C = 1:
    regression; integer labels: single-label; else multi-label) and written to the config.
    """

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.classifier = ClassificationHead(
            hidden_size=config.hidden_size, num_labels=config.num_labels, dropout_prob=config.classifier_dropout_prob
        )
        self.post_init()

    def _head(self, out: BackboneOutput, *, labels: OptTensor, attention_mask: OptTensor) -> ModelOutput:
        logits = self.classifier(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = compute_loss(logits, labels, problem_type=self._problem_type(labels))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)

    def _problem_type(self, labels: Tensor) -> str:
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        return self.config.problem_type


class XLMRobertaXLForMultipleChoice(XLMRobertaXLTaskModel):
    """Multiple choice: inputs (B, C, S) (embeddings (B, C, S, H)) are flattened to (B * C, S);
    the pooled output → dropout → linear(H, 1) gives logits (B, C); cross-entropy loss.
    (HF's argument order, which differs from the other task models'.)"""

    add_pooling_layer = True
    _choice_inputs = ("attention_mask", "token_type_ids", "position_ids", "inputs_embeds")

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)  # HF: not classifier_dropout here
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids: OptTensor = None, token_type_ids: OptTensor = None,
                attention_mask: OptTensor = None, labels: OptTensor = None, position_ids: OptTensor = None,
                head_mask: OptTensor = None, inputs_embeds: OptTensor = None, output_attentions: OptBool = None,
                output_hidden_states: OptBool = None, return_dict: OptBool = None,
                skip_padding: bool = False) -> Any:
        arguments = locals()
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        flat = {k: v.flatten(0, 1) if k in self._choice_inputs and v is not None else v for k, v in arguments.items()}
        out = self._encode(None if input_ids is None else input_ids.flatten(0, 1), flat)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, num_choices)
        loss = None if labels is None else compute_loss(logits, labels, problem_type="single_label_classification")
        result = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                           attentions=out.attentions)
        return self._result(result, out, return_dict)


class XLMRobertaXLForTokenClassification(XLMRobertaXLTaskModel):
    """Token classification: dropout → linear, logits (B, S, C); cross-entropy loss.

    XL quirk (kept from HF): with an ``attention_mask``, labels at masked positions are ignored.
    """

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _head(self, out: BackboneOutput, *, labels: OptTensor, attention_mask: OptTensor) -> ModelOutput:
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask.reshape(labels.shape) != 1, IGNORE_INDEX)
            loss = compute_loss(logits, labels, problem_type="single_label_classification")
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class XLMRobertaXLForQuestionAnswering(XLMRobertaXLTaskModel):
    """Extractive QA: ``qa_outputs`` = linear(H, num_labels) as HF (``num_labels`` is 2 for QA);
    its first two columns are the start/end logits (B, S). Loss: mean of the start and end
    cross-entropies; positions are clamped to [0, S] and S (outside the sequence) is ignored.

    Other label counts build, save and load like HF's (whose config.json and weights round-trip
    either way). With ``num_labels > 2`` the extra columns are unused: HF's forward fails there
    (it unpacks a ``split(1)`` into two), ours uses the first two columns, so a bare checkpoint
    whose config carries another task's label count still gives a working QA model. With
    ``num_labels < 2`` forward raises `ValueError`. Checkpoints written before the head followed
    ``num_labels`` (a 2-row ``qa_outputs`` whatever the config's label count) load with
    ``num_labels`` taken from the weights (`config_for_weights`)."""

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def config_for_weights(cls, config: XLMRobertaXLConfig, shapes: Any) -> XLMRobertaXLConfig:
        """``config`` with ``num_labels`` set to the rows of the checkpoint's ``qa_outputs.weight``
        (``shapes``: key -> shape) when they differ; unchanged when there is no such weight."""
        from .checkpoint import find_key  # the key lookup of the checkpoint's shape checks

        found = find_key(shapes, "qa_outputs.weight")
        rows = found[1][0] if found is not None and len(found[1]) == 2 else None
        if rows is None or rows == config.num_labels:
            return config
        logger.warning("the config says num_labels=%d but qa_outputs.weight has %d rows (a checkpoint written "
                       "before the QA head followed num_labels): using num_labels=%d", config.num_labels, rows, rows)
        return config.copy(num_labels=int(rows))

    def forward(self, input_ids: OptTensor = None, attention_mask: OptTensor = None,
                token_type_ids: OptTensor = None, position_ids: OptTensor = None, head_mask: OptTensor = None,
                inputs_embeds: OptTensor = None, start_positions: OptTensor = None, end_positions: OptTensor = None,
                output_attentions: OptBool = None, output_hidden_states: OptBool = None,
                return_dict: OptBool = None, skip_padding: bool = False) -> Any:
        if self.qa_outputs.out_features < 2:
            raise ValueError(
                f"XLMRobertaXLForQuestionAnswering needs num_labels >= 2 (start and end logits; 2 is the QA "
                f"head), this model has num_labels={self.qa_outputs.out_features}; build or load it with num_labels=2"
            )
        out = self._encode(input_ids, locals())
        qa_logits = self.qa_outputs(out.last_hidden_state)
        # HF: qa_logits.split(1, dim=-1) -> (start, end); the same two columns when num_labels > 2
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in qa_logits[..., :2].split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            length = start_logits.shape[1]
            losses = [
                compute_loss(
                    logits,
                    positions.reshape(-1).clamp(0, length),
                    problem_type="single_label_classification",
                    ignore_index=length,
                )
                for logits, positions in ((start_logits, start_positions), (end_logits, end_positions))
            ]
            loss = (losses[0] + losses[1]) / 2
        result = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=out.hidden_states, attentions=out.attentions)
        return self._result(result, out, return_dict)
