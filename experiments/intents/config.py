"""Few-shot intent classification on a frozen pretrained encoder: do meta-learned prompts help?

  .venv/bin/python -m experiments.intents --workdir runs/intents_frozen
  .venv/bin/python -m experiments.intents --workdir runs/intents_fomaml --config.method=fomaml
  .venv/bin/python -m experiments.intents --workdir runs/intents_fomaml --config.test_data=other.jsonl

Protocol (IntentBERT's, Zhang et al. 2021): CLINC150's 150 intents in 10 domains, out-of-scope
utterances left out. Classes are split by domain (the fields below, fixed): meta-train on 6
domains, meta-validate on 2 (model selection only: each method's inner-step count is chosen per
setting on validation episodes), meta-test on banking + credit_cards (30 intents). Every
utterance of a class is usable (CLINC150's own train/val/test split is not used: the classes
are disjoint). The encoder (all-MiniLM-L6-v2, mean pooling, L2-normalised) stays frozen except
in the two fine-tuning rows. Test episodes: 5 queries per class, config.eval_tasks per
setting, the same episodes for every method; mean accuracy +- 1.96 std / sqrt(n).

Methods (config.method):
  frozen_prototypes   cosine prototypes of the frozen embeddings, no training
  frozen_logreg       per-episode logistic regression on them (scikit-learn's default
                      objective, C = 1: mean cross-entropy + ||W||^2 / (2 C n), by gradient
                      descent)
  prompt_tuning       a prompt tuned per episode from scratch (config.prompt_init: random or
                      vocab; config.prompt: tokens or prefix), prototype head, no meta-training
  maml, fomaml, reptile, metasgd
                      the prompt's initialisation meta-learned (MetaPrompting with the encoder
                      frozen); Meta-SGD also meta-learns a per-parameter inner learning rate
  prompt_pool         a pool of config.pool_size prompts mixed by attention from each
                      utterance's own embedding (MetaPrompter-style), first-order MAML
  generated           a prompt generated from the support set's mean embedding, no inner loop
  generated_maml      the same, refined by an inner loop (its representation adapts)
  average             SPoT-style: one prompt trained per meta-training domain (supervised, a
                      linear head over the domain's intents), averaged: the initialisation
  multitask           one prompt trained by supervised learning over all meta-training intents
                      (linear head over them, then dropped): the initialisation
  finetune            IntentBERT-style: the whole encoder fine-tuned on the meta-training
                      intents (supervised), then prototypes
  episode_finetune    the whole encoder fine-tuned per episode on the support set (first order)
The prompt rows use a prototype head (cosine, config.scale) and can tune the prompt per episode
with config.eval_inner_steps SGD steps at config.inner_lr (validation picks the count). By
default only the rows whose method is per-episode adaptation (prompt_tuning, generated_maml,
episode_finetune, frozen_logreg) take test-time steps: a prototype head gives the others' inner
loop almost no signal (at 1 shot each support utterance is its own class prototype), so 5
steps changed no accuracy while costing most of the evaluation (measured in METHODS below).

Prompts enter at config.entry_layer (late prompts, Liu et al. 2022). The layers below it are
computed once per utterance for the whole data set (the encoder is frozen), so an episode
gathers cached hidden states; entry_layer 0 puts them at the input.
"""

from typing import NamedTuple, Optional

from ml_collections import config_dict

import mtpjax as mj
from experiments._lib import config as common

P, PS, H, S = mj.PROMPT, mj.PROMPT_SHARED, mj.HEAD, mj.SHARED


class Method(NamedTuple):
  """One intents method: everything `experiments.intents.build` needs to know about it.

  algorithm: how each episode adapts (evaluation) and, if meta-trained, what is learned.
  features: what an episode's x carries beyond the ids: "lower" (the hidden states below a
    late prompt), "embedding" (the final embeddings: nothing in the encoder adapts) or "ids"
    (nothing: the encoder adapts per episode).
  prompt: None, "static" (tokens or a prefix), "pool" (an ensemble read by each utterance) or
    "generated" (from the support set).
  head: "prototypes" (cosine, config.scale) or "logreg" (a zero linear head per episode).
  training: "none", "episodic" (the shared loop's meta-training), "supervised" (the shared
    loop over every meta-training intent with a linear head, no inner loop) or "average"
    (per-domain prompts trained while the experiment is built, averaged).
  trains: the roles supervised training updates.
  vocab_init: whether config.prompt_init="vocab" applies (static prompt tokens).
  inner_loop: whether episodes adapt at all (config.inner_steps may be > 0).
  adapts: whether evaluation reports adapted parameters.
  defaults: config fields this method sets unless the user does.
  """

  algorithm: mj.Algorithm
  features: str = "lower"
  prompt: Optional[str] = "static"
  head: str = "prototypes"
  training: str = "episodic"
  trains: tuple = ()
  vocab_init: bool = False
  inner_loop: bool = True
  adapts: bool = True
  defaults: dict = {}

  @property
  def meta_trained(self) -> bool:
    """Whether the shared loop trains it (config.num_steps > 0 is allowed)."""
    return self.training in ("episodic", "supervised")

  @property
  def task_independent_prompt(self) -> bool:
    """A prompt that does not depend on the task: before adaptation, every utterance can be
    embedded once with it (the zero-step shortcut of the evaluation)."""
    return self.prompt in ("static", "pool")


_prompt_only = lambda name: mj.get_algorithm(name, fast=(P,), outer=(P,))
# Tested without per-episode steps unless config.eval_inner_steps asks for them: with a
# prototype head the inner loop has almost nothing to fit. Measured on maml (20 meta-steps,
# inner lr 0.1) with eval_inner_steps=(0, 5): on the 200 validation episodes of each of the five
# settings, 5 steps left every accuracy unchanged to the fourth digit (92.78% at 5-way 1-shot,
# 83.69% at 15-way 1-shot), and the evaluation took 67 of the run's 69 minutes on 2 CPU cores;
# the 0-step shortcut embeds each utterance once instead.
_no_test_steps = dict(eval_inner_steps=(0,))
METHODS = {
    "frozen_prototypes": Method(mj.get_algorithm("maml", fast=(S,)), features="embedding",
                                prompt=None, training="none", adapts=False,
                                defaults=dict(num_steps=0, eval_inner_steps=(0,))),
    # Logistic regression converges in the inner loop: 300 steps of gradient descent at
    # rate 1 on unit-norm features (the objective is 1-smooth plus the penalty).
    "frozen_logreg": Method(mj.get_algorithm("anil"), features="embedding", prompt=None,
                            head="logreg", training="none",
                            defaults=dict(num_steps=0, eval_inner_steps=(300,), inner_lr=1.0)),
    # Inner lr 30: chosen on 40 validation episodes (5-way 2- and 5-shot) over 0.1, 3 and 30
    # (97.4 -> 97.6 and 97.6 -> 98.0% after 5 steps at 30; 0.1 changed nothing).
    "prompt_tuning": Method(_prompt_only("fomaml"), training="none", vocab_init=True,
                            defaults=dict(num_steps=0, inner_lr=30.0)),
    "maml": Method(_prompt_only("maml"), vocab_init=True, defaults=_no_test_steps),
    "fomaml": Method(_prompt_only("fomaml"), vocab_init=True, defaults=_no_test_steps),
    "reptile": Method(_prompt_only("reptile"), vocab_init=True,
                      defaults=dict(inner_steps=5, **_no_test_steps)),
    "metasgd": Method(_prompt_only("metasgd"), vocab_init=True, defaults=_no_test_steps),
    "prompt_pool": Method(mj.get_algorithm("fomaml", fast=(P,), outer=(P, PS)), prompt="pool",
                          defaults=dict(inner_steps=5, **_no_test_steps)),
    # The generated prompt's task part is an offset of its support-set representation: zero
    # for every task, adapted by the inner loop; the generator is what is meta-learned.
    "generated": Method(mj.get_algorithm("maml", fast=(P,), outer=(PS,), reset=(P,)),
                        prompt="generated", inner_loop=False,
                        defaults=dict(inner_steps=0, eval_inner_steps=(0,))),
    "generated_maml": Method(mj.get_algorithm("maml", fast=(P,), outer=(PS,), reset=(P,)),
                             prompt="generated"),
    # Trained per domain while the experiment is built (config.supervised_steps each).
    "average": Method(_prompt_only("fomaml"), training="average",
                      defaults=dict(num_steps=0, **_no_test_steps)),
    # Supervised training through the shared loop: one batch of config.supervised_batch
    # utterances per step (meta_batch_size 1, no inner loop).
    "multitask": Method(_prompt_only("fomaml"), training="supervised", trains=(P, H),
                        defaults=dict(num_steps=300, inner_steps=0, meta_batch_size=1,
                                      outer_lr=1e-2, **_no_test_steps)),
    "finetune": Method(mj.get_algorithm("maml", fast=(S,)), features="embedding", prompt=None,
                       training="supervised", trains=(S, H),
                       defaults=dict(num_steps=300, inner_steps=0, meta_batch_size=1,
                                     outer_lr=2e-5, eval_inner_steps=(0,))),
    # Inner lr 1: chosen on 40 validation episodes (5-way 2-shot) over 1e-3, 1e-2, 0.1, 1 and
    # 10 (97.1% at 0 steps; after 5 steps 97.1, 97.1, 97.2, 97.3 and 68.1%).
    "episode_finetune": Method(mj.get_algorithm("fomaml", fast=(S,)), features="ids",
                               prompt=None, training="none",
                               defaults=dict(num_steps=0, eval_inner_steps=(0, 5), inner_lr=1.0,
                                             eval_batch_size=2)),
}
NO_META_TRAINING = tuple(m for m, r in METHODS.items() if r.training == "none")

CLINC_DOMAINS = ("auto_and_commute", "banking", "credit_cards", "home", "kitchen_and_dining",
                 "meta", "small_talk", "travel", "utility", "work")


ARG = dict(method="frozen_prototypes")  # get_config's argument: "maml" or "method=maml"

# The protocol's values for the fields a method may change (its Method.defaults).
PROTOCOL = dict(num_steps=500, meta_batch_size=4, inner_steps=3, inner_lr=0.1, outer_lr=1e-3,
                eval_inner_steps=(0, 5), eval_batch_size=None)


def get_config(arg=None):
  arg = common.parse_arg(arg, **ARG)
  common.check_choice("method", arg.method, METHODS)
  protocol = PROTOCOL
  c = common.base_config(algorithm=arg.method, num_steps=protocol["num_steps"],
                         meta_batch_size=protocol["meta_batch_size"],
                         inner_steps=protocol["inner_steps"], inner_lr=protocol["inner_lr"],
                         outer_lr=protocol["outer_lr"])
  c.method = arg.method
  # c.algorithm is the method's name (results.json's "algorithm"); set --config.method.
  # Files; None: $MTPJAX_DATA_DIR/..., else ../shared/data beside the checkout.
  c.data = config_dict.placeholder(str)       # clinc150.jsonl
  c.encoder = config_dict.placeholder(str)    # all-MiniLM-L6-v2/
  c.test_data = ""     # another JSONL (text + intent or label): also evaluated on all its classes
  c.train_domains = ("auto_and_commute", "home", "kitchen_and_dining", "meta", "small_talk",
                     "travel")
  c.val_domains = ("utility", "work")
  c.test_domains = ("banking", "credit_cards")
  c.max_len = 32                # tokens per utterance ([CLS] and [SEP] included); 1 of 22,500 is cut
  c.ways = 5                    # meta-training episodes
  c.shots = 1
  c.queries = 5                 # per class, in training and test episodes
  c.eval_settings = ("5x1", "5x2", "5x5", "5x10", "15x1")  # WAYSxSHOTS
  c.val_tasks = 200             # validation episodes per setting (model selection)
  c.eval_seed = 2021            # test and validation episodes depend only on this
  # Episodes per vmapped evaluation chunk; None: sized to eval_chunk_utterances.
  c.eval_batch_size = config_dict.placeholder(int, protocol["eval_batch_size"])
  c.eval_chunk_utterances = 400  # ... to this many utterances (memory; 5-way 1-shot: 13 episodes)
  c.prompt = "tokens"           # tokens | prefix (keys and values in every layer from entry_layer)
  c.prompt_length = 8
  c.prompt_init = "random"      # random | vocab (hidden states of random words at entry_layer)
  c.entry_layer = 4             # 0: input prompts; k: late prompts at layer k of 6
  c.scale = 10.0                # the prototype head's cosine scale (inverse temperature)
  c.pool_size = 8               # prompt_pool: prompts in the pool
  c.generator_hidden = 128      # generated: the generator's hidden width
  c.supervised_steps = 50       # average: supervised steps per meta-training domain
  c.supervised_batch = 32       # average / multitask / finetune: utterances per step
  c.logreg_c = 1.0              # frozen_logreg: inverse regularisation strength
  c.eval_inner_steps = protocol["eval_inner_steps"]  # per method (selected on validation)
  c.log_every = 25
  c.checkpoint_every = 100
  c.lock()  # a Method.defaults key that is no field is an error, not a silent new field
  c.update(METHODS[arg.method].defaults)  # the method's own values
  c.unlock()
  return c


def check(config) -> None:
  """Clear errors for this experiment's own fields, before any data is read."""
  common.check_choice("method", config.method, METHODS)
  if config.algorithm != config.method:
    raise ValueError(f"config.algorithm is set from config.method; set --config.method "
                     f"instead (got algorithm={config.algorithm!r}, method={config.method!r})")
