"""The paper's experiments (Tables 1–3) on one catalog, trained by the shipped trainer.

    transformed examples ── hash of id ──► train (fit) | validation | eval (untouched)
    encoders' fixed parts, once per product ──► feature cache (f_t, f_i and the top blocks' inputs)
    tfidf_svm on the same text (title and extra text columns) and splits (the baseline a user tries first),
    and tfidf_image_poe (its text expert times a LogisticRegression on the cached image features)
    for each tune ("frozen", then "top"), every model through trainer/train.py's Run (the pipeline's
    training loop), for each seed:
        the learning rate per model (chosen on validation with the first seed where there are
        candidates), early stopping on validation; decision-level heads cross-fitted, or in-sample
        where that wins on validation
        one streamed pass over eval for all models of the seed → top-1/top-5/macro-F1, Table 1

Choices are made on the validation split only; the eval split is read once per seed and tune,
after training. Under "top", a unimodal model's first phase is its "frozen" model of the same seed
(the same head on the same features), and so is each cross-fitted fold's, so "top" costs only its
fine-tuning phases.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import typing

import numpy as np
import tensorflow as tf

from common import baselines, features, poe
from common.metrics import UnimodalAgreement
from trainer import features_cache
from trainer.model import FROZEN, TOP, ModelConfig
from trainer.recipe import ADAMW, Recipe
from trainer.stages import CROSSFIT, IN_SAMPLE, STAGES_DIR, TrainConfig, Trained
from trainer.train import Run

TUNES = (FROZEN, TOP)
# (run, {model: Trained} of one form) → {model: {top1_accuracy, top5_accuracy, macro_f1, examples, ece,
# coverage_at_98, threshold_at_98, temperature}, and "table1": {model: table} with both unimodal models}:
# one pass over the eval split, by the evaluate stage's figures (pipeline/benchmark.py), scores
# calibrated as the exported model's are.
EvaluateModels = typing.Callable[[Run, dict], dict]
# The models of the paper's Tables 2 and 3 (key_based is the ablation between keyless and HANet).
PAPER_MODELS = (
    features.IMAGE_ONLY,
    features.TEXT_ONLY,
    features.DECISION_LEVEL,
    features.POLICY,
    features.CONCAT,
    features.KEYLESS,
    features.KEY_BASED,
    features.HANET,
)


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    models: tuple[str, ...] = PAPER_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    tunes: tuple[str, ...] = TUNES
    # Heads start from scratch on fixed features: learning rates far above fine-tuning's 2e-5.
    # One is chosen per model on the validation split with the first seed.
    learning_rates: tuple[float, ...] = (3e-3, 1e-2)
    max_epochs: int = 30
    patience: int = 5
    # tune="top": the fine-tuning phase of the encoders' last blocks with the trained head. Choosing
    # between 1e-4 and 3e-4 on validation (seed 0) picked 3e-4 for the unimodal models and 1e-4 for
    # every feature fusion on both catalogs (docs/results.md), at a third of the benchmark's time: those
    # are the rates. More than one candidate brings the choice on validation back.
    top_unimodal_learning_rates: tuple[float, ...] = (3e-4,)
    top_fusion_learning_rates: tuple[float, ...] = (1e-4,)
    top_epochs: int = 8
    top_patience: int = 2
    batch_size: int = 32
    weight_decay: float = 0.01
    validation_fraction: float = 0.125
    crossfit_folds: int = 3
    baseline: bool = True

    def __post_init__(self):
        unknown = [m for m in self.models if m not in features.FUSIONS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; expected some of {features.FUSIONS}")
        if not (self.seeds and self.learning_rates and self.top_unimodal_learning_rates
                and self.top_fusion_learning_rates):
            raise ValueError("at least one seed and one learning rate per phase are needed")
        if [t for t in self.tunes if t not in TUNES]:
            raise ValueError(f"tunes must be some of {TUNES}, got {self.tunes}")
        if TOP in self.tunes and FROZEN not in self.tunes:
            raise ValueError("tune top starts from the frozen heads: run both tunes")

    def training_order(self) -> list[str]:
        """Unimodal models first: the other models start from them or fuse them."""
        needed = set(self.models)
        if needed - set(features.UNIMODAL_FUSIONS):
            needed |= set(features.UNIMODAL_FUSIONS)
        return [m for m in features.FUSIONS if m in needed]  # FUSIONS lists the unimodal ones first

    def learning_rates_of(self, tune: str, model: str) -> tuple[float, ...]:
        """The candidates of `model` in `tune`; decision networks are small heads on probabilities in
        either tune."""
        if tune != TOP or model in features.DECISION_FUSIONS:
            return self.learning_rates
        if model in features.UNIMODAL_FUSIONS:
            return self.top_unimodal_learning_rates
        return self.top_fusion_learning_rates

    def recipe(self, tune: str, learning_rate: float) -> Recipe:
        epochs = self.max_epochs if tune == FROZEN else self.top_epochs
        return Recipe(ADAMW, learning_rate=learning_rate, epochs=epochs, batch_size=self.batch_size,
                      weight_decay=self.weight_decay)

    def train_config(self, tune: str, head_learning_rate: float = 1e-2) -> TrainConfig:
        return TrainConfig(tune=tune, validation_fraction=self.validation_fraction,
                           patience=self.patience if tune == FROZEN else self.top_patience,
                           head_recipe=self.recipe(FROZEN, head_learning_rate), crossfit_folds=self.crossfit_folds)


@dataclasses.dataclass(frozen=True)
class FrozenTune:
    """What tune "top" starts from, of the frozen tune: its models ({seed: {model: Trained}}), its
    learning rate per model, and its cross-fitted folds (TuneTrainer.folds)."""

    models: dict
    choices: dict
    folds: dict


class TuneTrainer:
    """Trains every model of `config` for one tune, on one Run (its work directory under
    OUT/runs/<tune>/), a model of each seed at a time. `run_args`: Run's arguments but its
    train_config; `frozen`: the frozen tune's results, under "top"."""

    def __init__(self, config: AblationConfig, tune: str, run_args: dict, frozen: FrozenTune | None = None):
        self.config, self.tune, self.log, self.frozen = config, tune, run_args["log"], frozen
        self.runs = {}  # one Run per first-phase learning rate (the head recipe is part of a Run's config)
        # {(seed, model, learning rate): {fold: {model: Trained}}}: the cross-fitted unimodal models, shared
        # by both decision-level heads; the frozen tune's are their first phases under "top".
        self.folds, self.frozen_folds = {}, frozen.folds if frozen else {}
        self._args = run_args

    def run(self, head_learning_rate: float = 1e-2) -> Run:
        if head_learning_rate not in self.runs:
            self.runs[head_learning_rate] = Run(
                train_config=self.config.train_config(self.tune, head_learning_rate), **self._args)
        return self.runs[head_learning_rate]

    def stage_dir(self, model: str, seed: int, learning_rate: float, tag: str = "") -> str:
        return os.path.join(self.run().work_dir, STAGES_DIR, f"seed{seed}", f"{model}{tag}-lr{learning_rate:g}")

    def fit(self, model: str, seed: int, learning_rate: float, trained: dict, head_rates: dict,
            decision_training: str = CROSSFIT, unimodal_rates: dict | None = None) -> Trained:
        """One model of one seed: `trained` holds this seed's unimodal models of this tune, `head_rates`
        the frozen tune's learning rate per model (the first phases' under "top"); under "top" the
        frozen tune's models of this seed are the unimodal models' first phases."""
        frozen = self.frozen.models.get(seed) if self.frozen else None
        run = self.run(head_rates.get(model, self.config.learning_rates[-1]))
        recipe = self.config.recipe(self.tune, learning_rate)
        if model in features.DECISION_FUSIONS:
            folds = None
            if decision_training == CROSSFIT:
                folds = {i: {} for i in range(self.config.crossfit_folds)}
                for m in features.UNIMODAL_FUSIONS:
                    for i, fold in self.crossfit(m, seed, unimodal_rates[m], head_rates, trained[m]).items():
                        folds[i].update(fold)
            tag = "-" + "-".join(f"{m}{unimodal_rates[m]:g}" for m in features.UNIMODAL_FUSIONS)
            return run.train_decision_model(
                model, self.config.recipe(FROZEN, learning_rate),
                self.stage_dir(model, seed, learning_rate, f"-{decision_training}"), seed=seed,
                unimodal={m: trained[m] for m in features.UNIMODAL_FUSIONS}, folds=folds, tag=tag)
        head_start = frozen.get(model) if frozen and model in features.UNIMODAL_FUSIONS else None
        unimodal = {m: trained[m] for m in features.UNIMODAL_FUSIONS} if model not in features.UNIMODAL_FUSIONS else None
        return run.train_feature_model(model, recipe, self.stage_dir(model, seed, learning_rate), seed=seed,
                                       unimodal=unimodal, head_start=head_start)

    def crossfit(self, model: str, seed: int, learning_rate: float, head_rates: dict, whole: Trained) -> dict:
        """{fold: {model: Trained}}: unimodal `model` of `seed` trained without each fold, once, for
        the epochs `whole` (the same model on the whole train split) kept."""
        key = (seed, model, learning_rate)
        if key not in self.folds:
            head_rate = head_rates.get(model, self.config.learning_rates[-1])
            first_phases = self.frozen_folds.get((seed, model, head_rate))
            self.folds[key] = self.run(head_rate).crossfit_unimodal(
                seed, {model: self.config.recipe(self.tune, learning_rate)}, names=(model,), head_starts=first_phases,
                whole={model: whole})
        return self.folds[key]


def _validation_of(trained: Trained) -> float:
    return float(trained.validation_accuracy or 0.0)


def _training_figures(t: Trained) -> dict:
    return {"seconds": t.logs.get("seconds", 0.0) + t.logs.get("head_phase", {}).get("seconds", 0.0),
            "epochs": t.logs.get("epochs"), "validation_top1_accuracy": _validation_of(t)}


def run_tune(tune_trainer: TuneTrainer, config: AblationConfig, evaluate: EvaluateModels) -> tuple[dict, dict]:
    """Every model × seed of one tune. Returns (raw results, {seed: {model: Trained}})."""
    log, tune = tune_trainer.log, tune_trainer.tune
    chosen, decision_choice, selection, all_models, runs = {}, {}, {}, {}, []
    head_rates = dict(tune_trainer.frozen.choices if tune_trainer.frozen else {})
    for seed in config.seeds:
        trained: dict[str, Trained] = {}
        started = time.monotonic()
        for model in config.training_order():
            rates = config.learning_rates_of(tune, model)
            kinds = [CROSSFIT]
            if model in features.DECISION_FUSIONS and tune == FROZEN and seed == config.seeds[0]:
                kinds = [CROSSFIT, IN_SAMPLE]  # in-sample is kept only if it wins on validation
            elif model in features.DECISION_FUSIONS:
                kinds = [decision_choice.get(model, CROSSFIT)]
            if model in chosen:
                candidates = [(chosen[model], kinds[0])]
            else:
                candidates = [(rate, kind) for rate in rates for kind in kinds]
            fitted = {}
            for rate, kind in candidates:
                unimodal_rates = {m: chosen[m] for m in features.UNIMODAL_FUSIONS if m in chosen}
                fitted[(rate, kind)] = tune_trainer.fit(model, seed, rate, trained, head_rates or chosen, kind,
                                                        unimodal_rates)
            (rate, kind), best = max(fitted.items(), key=lambda kv: (_validation_of(kv[1]), kv[0][1] == CROSSFIT,
                                                                      -kv[0][0]))
            if model not in chosen:
                selection[model] = [{"learning_rate": r, "decision_training": k, "validation_top1_accuracy":
                                     _validation_of(f)} for (r, k), f in fitted.items()]
                chosen[model] = rate
                if model in features.DECISION_FUSIONS:
                    decision_choice[model] = kind
                log(f"[{tune} select] {model}: validation top-1 " + ", ".join(
                    f"{r:g}/{k} → {_validation_of(f):.4f}" if model in features.DECISION_FUSIONS else
                    f"{r:g} → {_validation_of(f):.4f}" for (r, k), f in fitted.items()) + f"; chose {rate:g}")
            trained[model] = best
            log(f"[{tune} seed {seed}] {model}: validation top-1 {_validation_of(best):.4f}, "
                f"{_training_figures(best)['seconds']:.0f} s")
        training_seconds = time.monotonic() - started
        started = time.monotonic()
        figures = evaluate(tune_trainer.run(), {m: trained[m] for m in config.training_order()})
        log(f"[{tune} seed {seed}] eval: " + ", ".join(
            f"{m} {figures[m]['top1_accuracy']:.4f}" for m in config.models))
        runs.append({"seed": seed, "eval": figures,
                     "training": {name: _training_figures(t) for name, t in trained.items()},
                     "seconds": {"training": training_seconds, "eval": time.monotonic() - started}})
        all_models[seed] = trained
    raw = {"tune": tune, "learning_rates": chosen, "decision_training": decision_choice, "selection": selection,
           "runs": runs,
           "models": list(config.models)}
    return raw, all_models


def run_baseline(run: Run, classes: int) -> dict:
    """tfidf_svm fitted on the train split, scored on validation and eval."""
    spec = baselines.record_spec()
    from trainer import data

    def split(name):
        source, keep = data.split_predicate(name, run.train_config.validation_fraction)
        records = data.select(data.read_records(os.path.join(run.examples_dir, source, "*"), shuffle=False), keep)
        return baselines.titles_and_labels(records.batch(1024).map(lambda s: tf.io.parse_example(s, spec)))

    return baselines.fit_and_score(split(features.TRAIN_SPLIT),
                                   {features.VALIDATION_SPLIT: split(features.VALIDATION_SPLIT),
                                    features.EVAL_SPLIT: split(features.EVAL_SPLIT)}, classes)


def run_poe(run: Run, classes: int) -> dict:
    """tfidf_image_poe on the same products: titles from the examples, image features from the feature
    cache (the frozen encoder's f_i); C chosen on validation, refitted on train and validation, scored on eval."""
    def split(name):
        return features_cache.titles_and_image_features(run.cache_dir, run.examples_dir, name,
                                                        run.train_config.validation_fraction)[:3]

    return poe.fit_and_score(split(features.TRAIN_SPLIT), split(features.VALIDATION_SPLIT),
                             {features.EVAL_SPLIT: split(features.EVAL_SPLIT)}, classes)


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def summarize(raw: dict) -> dict:
    """Mean ± std over seeds of every figure the tables show, for one tune."""
    runs = raw["runs"]
    models = {}
    for name in raw["models"]:
        per_seed = [run["eval"][name] for run in runs]
        entry = {
            metric: _mean_std([figures[metric] for figures in per_seed])
            for metric in ("top1_accuracy", "top5_accuracy", "macro_f1", "ece", "coverage_at_98")
        }
        entry["validation_top1_accuracy"] = _mean_std(
            [run["training"][name]["validation_top1_accuracy"] for run in runs]
        )
        entry["train_seconds"] = _mean_std([run["training"][name]["seconds"] for run in runs])
        entry["learning_rate"] = raw["learning_rates"][name]
        if name in raw.get("decision_training", {}):
            entry["decision_training"] = raw["decision_training"][name]
        if all("table1" in run["eval"] for run in runs):
            entry["headroom"] = _headroom([run["eval"] for run in runs], name)
        for metric in ("text_weight_std", "routing_auc"):
            values = [run["eval"][name].get("routing", {}).get(metric) for run in runs]
            if values and None not in values:
                entry[metric] = _mean_std(values)
        models[name] = entry
    summary = {"models": models, "seeds": [run["seed"] for run in runs]}
    if all("table1" in run["eval"] for run in runs):
        table = [run["eval"]["table1"][features.TEXT_ONLY] for run in runs]
        summary["table1"] = {
            cell: _mean_std([t[cell]["percent"] for t in table]) for cell, _, _ in UnimodalAgreement.CELLS
        }
    summary["examples"] = runs[0]["eval"][raw["models"][0]]["examples"]
    summary["seconds"] = {kind: sum(run["seconds"][kind] for run in runs) for kind in ("training", "eval")}
    return summary


def summarize_all(raw: dict, tunes) -> dict:
    """{"tunes": {tune: summarize(...)}, "models": the last tune's models and the baseline's row (the
    figures a user compares first), "baseline"}."""
    summary = {"tunes": {tune: summarize(raw[tune]) for tune in tunes}}
    summary["models"] = dict(summary["tunes"][tunes[-1]]["models"])
    summary["tune"] = tunes[-1]
    for name, baseline in (raw.get("baseline") or {}).items():
        row = {metric: _mean_std([baseline[features.EVAL_SPLIT][metric]])
               for metric in ("top1_accuracy", "top5_accuracy", "macro_f1")}
        # tfidf_image_poe refits on validation after choosing on it: its validation figure is the choice's.
        validation = (baseline["choices"]["validation_top1_accuracy"] if "choices" in baseline
                      else baseline[features.VALIDATION_SPLIT]["top1_accuracy"])
        row["validation_top1_accuracy"] = _mean_std([validation if validation is not None else float("nan")])
        row["train_seconds"] = _mean_std([baseline["seconds"]])
        summary.setdefault("baseline", {})[name] = row
        summary["models"][name] = row
    return summary


def _headroom(evals: list[dict], name: str) -> dict | None:
    """What a model recovers of the oracle headroom (the products the text model gets wrong and the
    image model right): the share of those it gets right, and its net top-1 gain over text_only
    as a share of the headroom (which also counts what it loses where only the text model is right)."""
    recovered, net = [], []
    for figures in evals:
        cell = figures["table1"][name]["text_wrong_image_right"]
        headroom = cell["percent"] / 100.0
        if not headroom:
            continue  # a seed whose text model is never wrong where the image model is right says nothing here
        recovered.append(cell["fused_right_percent"])
        gain = figures[name]["top1_accuracy"] - figures[features.TEXT_ONLY]["top1_accuracy"]
        net.append(100.0 * gain / headroom)
    if not recovered:
        return None
    return {"recovered_percent": _mean_std(recovered), "net_gain_percent_of_headroom": _mean_std(net)}


def run_ablation(out: str, examples_dir: str, transform_graph_dir: str, model_config: ModelConfig,
                 config: AblationConfig, evaluate: EvaluateModels, log=print) -> dict:
    """The feature cache once, the baseline, then every tune, each seed's models scored by `evaluate`;
    returns {"cache", "baseline", tune: raw, "seconds": per phase}."""
    seconds = {}
    started = time.monotonic()
    cache_dir = os.path.join(out, "feature_cache")
    metadata = features_cache.cache_features(
        examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, cache_dir=cache_dir,
        model_config=model_config, top=TOP in config.tunes, validation_fraction=config.validation_fraction)
    seconds["feature cache"] = time.monotonic() - started
    results = {"cache": metadata}
    frozen = None
    for tune in config.tunes:
        run_args = dict(examples_dir=examples_dir, transform_graph_dir=transform_graph_dir,
                        work_dir=os.path.join(out, "runs", tune), model_config=model_config, log=log, cache_dir=cache_dir)
        tune_trainer = TuneTrainer(config, tune, run_args, frozen)
        if config.baseline and "baseline" not in results:
            started = time.monotonic()
            results["baseline"] = {baselines.TFIDF_SVM: run_baseline(tune_trainer.run(), tune_trainer.run().classes)}
            seconds["tfidf_svm"] = time.monotonic() - started
            log(f"[baseline] tfidf_svm: eval top-1 {results['baseline'][baselines.TFIDF_SVM]['eval']['top1_accuracy']:.4f}")
            started = time.monotonic()
            results["baseline"][poe.TFIDF_IMAGE_POE] = run_poe(tune_trainer.run(), tune_trainer.run().classes)
            seconds[poe.TFIDF_IMAGE_POE] = time.monotonic() - started
            log(f"[baseline] {poe.TFIDF_IMAGE_POE}: eval top-1 "
                f"{results['baseline'][poe.TFIDF_IMAGE_POE]['eval']['top1_accuracy']:.4f}")
        started = time.monotonic()
        raw, models = run_tune(tune_trainer, config, evaluate)
        seconds[f"{tune} models"] = time.monotonic() - started
        results[tune] = raw
        if tune == FROZEN:
            frozen = FrozenTune(models, raw["learning_rates"], tune_trainer.folds)
    results["seconds"] = seconds
    return results


def write_json(path: str, payload: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
