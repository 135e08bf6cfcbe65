"""Loss scaling laws L(N, D) = E + A/N^α + B/D^β and the compute-optimal split of a FLOP budget.

N counts all parameters (embeddings included, as Hoffmann et al. 2022 did), D training tokens, L
is the loss in nats per token.  Compute is C = 6·N·D (Kaplan et al. 2020, section 2.1), the
convention the laws were fitted under; the exact count from the shape (planner.model.flops) is
reported beside it.

Compute-optimal split (Hoffmann et al. 2022, section 3.3 and appendix D.2, eq. 4).  With
D = C / (6N) the loss along the compute budget is  L(N) = E + A N^-α + B (C/6)^-β N^β, and

    dL/dN = 0   ⇔   α A N^-α = β B (C/6)^-β N^β   ⇔   N^(α+β) = (α A / (β B)) (C/6)^β

so with  G = (α A / (β B))^(1/(α+β)):

    N_opt(C) = G (C/6)^(β/(α+β)),        D_opt(C) = (C/6) / N_opt = G^-1 (C/6)^(α/(α+β)).

"Chinchilla tokens" for a model of N parameters: at fixed N, L keeps falling as D grows, so the D
minimising L alone is infinite.  The usual meaning, used here, is the D for which N is the
compute-optimal size, N = N_opt(6 N D):  C/6 = (N/G)^((α+β)/β),  D*(N) = (N/G)^((α+β)/β) / N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from planner.model.flops import forward_flops_per_token
from planner.model.shape import ParamCounts, param_counts
from planner.spec.spec import ModelSpec, ScalingLawSpec, Spec

SIX = 6.0  #: FLOPs per parameter per token, forward + backward (Kaplan et al. 2020)
#: e^LOG_FLOAT_MAX is near the largest float; a law's answer beyond it is not a number
LOG_FLOAT_MAX = 700.0


def _pow(x: float, exponent: float) -> float:
    """x^exponent without overflow: a term too large for a float is refused, one too small is 0."""
    return _bounded_exp(exponent * math.log(x), "the law")


def _bounded_exp(log_value: float, law: str) -> float:
    if log_value > LOG_FLOAT_MAX:
        from planner.errors import SpecError
        raise SpecError("training.scaling_law", f"{law} gives e^{log_value:.0f} here, beyond any "
                        f"number (its exponents are far outside the published laws' range)")
    return math.exp(log_value)


@dataclass(frozen=True)
class Allocation:
    """One point (N, D) with its compute and predicted loss."""

    params: float
    tokens: float
    flops: float  #: 6·N·D
    loss: float  #: nats/token

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


@dataclass(frozen=True)
class ScalingLaw:
    """The Chinchilla form (Hoffmann et al. 2022, eq. 2), N counting every parameter."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"
    source: str = ""
    form = "chinchilla"

    @property
    def floor(self) -> float:
        """The irreducible loss: no N or D predicts below it."""
        return self.E

    def params(self, counts: ParamCounts) -> int:
        """The N this law was fitted with: all parameters, embeddings included."""
        return counts.total

    def constants(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    def loss(self, params: float, tokens: float) -> float:
        # in log space: a steep fitted exponent makes N^alpha overflow a float, its term ~0
        return self.E + self.A * _pow(params, -self.alpha) + self.B * _pow(tokens, -self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def optimal_params(self, flops: float) -> float:
        """N_opt(C) = G (C/6)^(β/(α+β))."""
        return self.G * (flops / SIX) ** (self.beta / (self.alpha + self.beta))

    def compute_optimal(self, flops: float) -> Allocation:
        n = self.optimal_params(flops)
        d = flops / SIX / n
        return Allocation(n, d, flops, self.loss(n, d))

    def optimal_tokens(self, params: float) -> float:
        """D*(N): the tokens for which N is the compute-optimal size (module docstring)."""
        log_per_six = (self.alpha + self.beta) / self.beta * math.log(params / self.G)
        return _bounded_exp(log_per_six - math.log(params), self.name)

    def allocation(self, params: float, tokens: float) -> Allocation:
        return Allocation(params, tokens, SIX * params * tokens, self.loss(params, tokens))

    def describe(self) -> str:
        return (f"{self.name}: L = {self.E:g} + {self.A:g}/N^{self.alpha:g} + "
                f"{self.B:g}/D^{self.beta:g}")


@dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020's joint law (eq. 1.5 and 4.1, constants of table 2), N counting the
    non-embedding parameters:  L(N, D) = [(N_c / N)^(α_N/α_D) + D_c / D]^α_D.

    At a fixed C = 6·N·D, with r = α_N / α_D, the loss is least where
    N^(r+1) = r N_c^r C / (6 D_c), so N_opt ∝ C^(α_D/(α_N+α_D)) = C^0.58 with these constants.
    Kaplan et al.'s often-quoted N_opt ∝ C^0.73 is another optimum: their compute-efficient
    frontier, from L(N, S) with training stopped early (section 6), not this law at
    convergence; docs/capacity-planning.md sets the two beside Chinchilla's C^0.5."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    name: str = "custom"
    source: str = ""
    form = "kaplan"
    floor = 0.0  #: the form has no irreducible term

    @property
    def r(self) -> float:
        return self.alpha_N / self.alpha_D

    def params(self, counts: ParamCounts) -> int:
        """The N this law was fitted with: non-embedding parameters."""
        return counts.non_embedding

    def constants(self) -> dict[str, float]:
        return {"N_c": self.N_c, "D_c": self.D_c, "alpha_N": self.alpha_N,
                "alpha_D": self.alpha_D}

    def loss(self, params: float, tokens: float) -> float:
        inner = _bounded_exp(self.r * math.log(self.N_c / params), self.name) + self.D_c / tokens
        return inner ** self.alpha_D

    def optimal_params(self, flops: float) -> float:
        return (self.r * self.N_c ** self.r * flops / (SIX * self.D_c)) ** (1 / (self.r + 1))

    def compute_optimal(self, flops: float) -> Allocation:
        n = self.optimal_params(flops)
        d = flops / SIX / n
        return Allocation(n, d, flops, self.loss(n, d))

    def optimal_tokens(self, params: float) -> float:
        """D*(N): the tokens for which N is the compute-optimal size: D = D_c N^r / (r N_c^r)."""
        return self.D_c / self.r * _bounded_exp(self.r * math.log(params / self.N_c), self.name)

    def allocation(self, params: float, tokens: float) -> Allocation:
        return Allocation(params, tokens, SIX * params * tokens, self.loss(params, tokens))

    def describe(self) -> str:
        return (f"{self.name}: L = [({self.N_c:g}/N)^({self.alpha_N:g}/{self.alpha_D:g}) + "
                f"{self.D_c:g}/D]^{self.alpha_D:g}, N non-embedding")


#: a law of either form
Law = Union[ScalingLaw, KaplanLaw]


def law_mapping(law: Law) -> dict:
    """The law as the spec's ``training.scaling_law`` section writes it."""
    return {"name": law.name, "form": law.form, **law.constants(), "source": law.source}


def save_law(law: Law, path) -> None:
    """A YAML file ``training.scaling_law: {file: PATH}`` reads (plan with a lab's own fit)."""
    from pathlib import Path

    import yaml
    Path(path).write_text(yaml.safe_dump(law_mapping(law), sort_keys=False))


def law_from_spec(s: ScalingLawSpec) -> Law:
    if s.form == "kaplan":
        return KaplanLaw(N_c=s.N_c, D_c=s.D_c, alpha_N=s.alpha_N, alpha_D=s.alpha_D,
                         name=s.name, source=s.source)
    return ScalingLaw(E=s.E, A=s.A, B=s.B, alpha=s.alpha, beta=s.beta, name=s.name,
                      source=s.source)


def preset_law(name: str) -> Law:
    """A shipped law by name or alias (planner/spec/data/scaling_laws.yaml)."""
    return law_from_spec(ScalingLawSpec.model_validate(name))


def law_of(spec: Spec) -> Law:
    return law_from_spec(spec.training.scaling_law)


def training_tokens(spec: Spec) -> Optional[float]:
    """The tokens the spec trains on: its number, or D*(N) for 'chinchilla'; None in budget mode
    (the planner chooses them, planner/budget.py)."""
    tokens = spec.training.tokens
    if tokens is None:
        return None
    if tokens == "chinchilla":
        law = law_of(spec)
        return law.optimal_tokens(law.params(param_counts(spec.model)))
    return float(tokens)


def model_flops_per_token(m: ModelSpec) -> float:
    """Forward + backward FLOPs per token counted from the shape (3x the forward: every matmul,
    attention scores and logits; planner.model.flops), the exact counterpart of 6·N."""
    return 3.0 * forward_flops_per_token(m)


@dataclass(frozen=True)
class TrainingFlops:
    six_nd: float  #: 6·N·D, the scaling laws' convention
    exact: float  #: counted from the shape, without recomputation

    @property
    def ratio(self) -> float:
        return self.exact / self.six_nd


def training_flops(m: ModelSpec, tokens: float) -> TrainingFlops:
    return TrainingFlops(six_nd=SIX * param_counts(m).active * tokens,
                         exact=model_flops_per_token(m) * tokens)


def loss_warning(law: Law, loss: float, vocab_size: int) -> Optional[str]:
    """Why a predicted loss cannot be taken at face value, or None.  No real model scores worse
    than a uniform guess over its vocabulary (ln V nats/token) nor better than the law's
    irreducible loss: a prediction outside that range means the model or data is outside the
    range the law was fitted on (tiny models, tiny token counts)."""
    uniform = math.log(vocab_size)
    if loss > uniform:
        return (f"{law.name} predicts {loss:.3f} nats/token, worse than a uniform guess over the "
                f"{vocab_size:,}-token vocabulary (ln V = {uniform:.3f}): this model and token "
                f"count lie outside the range the law was fitted on")
    if loss < law.floor:
        return (f"{law.name} predicts {loss:.3f} nats/token, below its irreducible loss "
                f"{law.floor:.3f}: outside the range the law was fitted on")
    return None


def chinchilla_summary(spec: Spec, tokens: float) -> dict:
    """Predicted loss of the spec's run and the law's compute-optimal tokens for its model.  A
    law whose exponents put an answer beyond any float leaves that answer None with a warning
    (the plan itself does not depend on it)."""
    from planner.errors import SpecError
    law = law_of(spec)
    n = law.params(param_counts(spec.model))
    flops = training_flops(spec.model, tokens)
    outside = []

    def bounded(f, *args):
        try:
            return f(*args)
        except SpecError as exc:
            outside.append(exc.problem)
            return None

    optimal = bounded(law.optimal_tokens, n)
    loss = bounded(law.loss, n, tokens)
    warning = (f"outside the law's range: {outside[0]}" if outside
               else loss_warning(law, loss, spec.model.vocab_size))
    return {"law": law.name, "params": n, "tokens": tokens, "tokens_per_param": tokens / n,
            "predicted_loss": loss, "compute_optimal_tokens": optimal,
            "compute_optimal_tokens_per_param": None if optimal is None else optimal / n,
            "six_nd_flops": flops.six_nd, "exact_flops": flops.exact, "warning": warning}
