"""The paper's experiments (Tables 1–3) on one catalog, trained by the shipped trainer.

    transformed examples ── hash of id ──► train (fit) | validation | eval (untouched)
    encoders' fixed parts, once per product ──► feature cache (f_t, f_i and the top blocks' inputs)
    tfidf_svm on the same text (title and extra text columns) and splits (the baseline a user tries first)
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

import numpy as np
import tensorflow as tf

from common import baselines, features
from common.metrics import CalibrationCounts, ClassCounts, RoutingCounts, UnimodalAgreement, top_k_ids
from trainer import calibration, features_cache, fusion
from trainer.model import FROZEN, TOP, ModelConfig, explained_model
from trainer.recipe import ADAMW, Recipe
from trainer.train import CROSSFIT, EVAL_BATCH_SIZE, IN_SAMPLE, STAGES_DIR, Run, TrainConfig, Trained

TUNES = (FROZEN, TOP)
# The models of the paper's Tables 2 and 3 (key_based is the ablation between keyless and HANet).
PAPER_MODELS = (
    fusion.IMAGE_ONLY,
    fusion.TEXT_ONLY,
    fusion.DECISION_LEVEL,
    fusion.POLICY,
    fusion.CONCAT,
    fusion.KEYLESS,
    fusion.KEY_BASED,
    fusion.HANET,
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
        unknown = [m for m in self.models if m not in fusion.FUSIONS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; expected some of {fusion.FUSIONS}")
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
        if needed - set(fusion.UNIMODAL_FUSIONS):
            needed |= set(fusion.UNIMODAL_FUSIONS)
        return [m for m in fusion.FUSIONS if m in needed]  # FUSIONS lists the unimodal ones first

    def learning_rates_of(self, tune: str, model: str) -> tuple[float, ...]:
        """The candidates of `model` in `tune`; decision networks are small heads on probabilities in
        either tune."""
        if tune != TOP or model in fusion.DECISION_FUSIONS:
            return self.learning_rates
        if model in fusion.UNIMODAL_FUSIONS:
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


class Benchmark:
    """Trains and evaluates every model of `config` for one tune, on one Run (its work directory
    under OUT/runs/<tune>/), a model of each seed at a time."""

    def __init__(self, out: str, examples_dir: str, transform_graph_dir: str, cache_dir: str,
                 model_config: ModelConfig, config: AblationConfig, tune: str, log=print,
                 frozen_folds: dict | None = None):
        self.config, self.tune, self.log = config, tune, log
        self.runs = {}  # one Run per first-phase learning rate (the head recipe is part of a Run's config)
        # {(seed, model, learning rate): {fold: {model: Trained}}}: the cross-fitted unimodal models, shared
        # by both decision-level heads; `frozen_folds`, the frozen tune's, are their first phases under "top".
        self.folds, self.frozen_folds = {}, frozen_folds or {}
        self._args = dict(examples_dir=examples_dir, transform_graph_dir=transform_graph_dir,
                          work_dir=os.path.join(out, "runs", tune), model_config=model_config, log=log,
                          cache_dir=cache_dir)

    def run(self, head_learning_rate: float = 1e-2) -> Run:
        if head_learning_rate not in self.runs:
            self.runs[head_learning_rate] = Run(
                train_config=self.config.train_config(self.tune, head_learning_rate), **self._args)
        return self.runs[head_learning_rate]

    def stage_dir(self, model: str, seed: int, learning_rate: float, tag: str = "") -> str:
        return os.path.join(self.run().work_dir, STAGES_DIR, f"seed{seed}", f"{model}{tag}-lr{learning_rate:g}")

    def fit(self, model: str, seed: int, learning_rate: float, trained: dict, frozen: dict | None,
            head_rates: dict, decision_training: str = CROSSFIT, unimodal_rates: dict | None = None) -> Trained:
        """One model of one seed: `trained` holds this seed's unimodal models of this tune, `frozen`
        this seed's models of the frozen tune (the first phases of "top"), `head_rates` the frozen
        tune's learning rate per model (the first phases' under "top")."""
        run = self.run(head_rates.get(model, self.config.learning_rates[-1]))
        recipe = self.config.recipe(self.tune, learning_rate)
        if model in fusion.DECISION_FUSIONS:
            folds = None
            if decision_training == CROSSFIT:
                folds = {i: {} for i in range(self.config.crossfit_folds)}
                for m in fusion.UNIMODAL_FUSIONS:
                    for i, fold in self.crossfit(m, seed, unimodal_rates[m], head_rates, trained[m]).items():
                        folds[i].update(fold)
            tag = "-" + "-".join(f"{m}{unimodal_rates[m]:g}" for m in fusion.UNIMODAL_FUSIONS)
            return run.train_decision_model(
                model, self.config.recipe(FROZEN, learning_rate),
                self.stage_dir(model, seed, learning_rate, f"-{decision_training}"), seed=seed,
                unimodal={m: trained[m] for m in fusion.UNIMODAL_FUSIONS}, folds=folds, tag=tag)
        head_start = frozen.get(model) if frozen and model in fusion.UNIMODAL_FUSIONS else None
        unimodal = {m: trained[m] for m in fusion.UNIMODAL_FUSIONS} if model not in fusion.UNIMODAL_FUSIONS else None
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


def evaluate_models(run: Run, models: dict[str, Trained]) -> dict:
    """One streamed pass over the eval split for all `models` (one form): {model: {top1_accuracy,
    top5_accuracy, macro_f1, examples, ece, coverage_at_98, temperature}} and, with both unimodal
    models, "table1" per model. Scores are calibrated as the exported model's are: a temperature
    fitted on the validation split (trainer/calibration.py)."""
    forms = {t.form for t in models.values()}
    if len(forms) != 1:
        raise ValueError(f"models of one pass must share a form, got {forms}")
    fitted = {name: run.calibrate(t) for name, t in models.items()}
    temperatures = {name: f.temperature if f else 1.0 for name, f in fitted.items()}  # None: no validation split
    counts = {name: ClassCounts(run.classes) for name in models}
    calibrated = {name: CalibrationCounts() for name in models}
    agreements = {name: UnimodalAgreement() for name in models}
    has_table1 = all(m in models for m in fusion.UNIMODAL_FUSIONS)
    explained = {name: explained_model(t.model) for name, t in models.items()}
    predict = {name: tf.function(lambda inputs, m=m: m(inputs, training=False)) for name, m in explained.items()}
    names = {name: list(t.model.input) for name, t in models.items()}
    routing = {name: RoutingCounts() for name, m in explained.items() if "stream_weights" in m.output}
    for inputs, labels in run.dataset(forms.pop(), features.EVAL_SPLIT, EVAL_BATCH_SIZE, shuffle=False):
        labels = labels.numpy()
        outputs = {name: predict[name]({k: inputs[k] for k in names[name]}) for name in models}
        logits = {name: outputs[name]["logits"].numpy() for name in models}
        top = {name: top_k_ids(logits[name]) for name in models}
        for name, counts_of_name in routing.items():
            counts_of_name.add(outputs[name]["stream_weights"].numpy()[:, 0], *(
                (top[fusion.TEXT_ONLY][:, 0] == labels, top[fusion.IMAGE_ONLY][:, 0] == labels) if has_table1 else ()))
        for name in models:
            counts[name].add(labels, top[name])
            calibrated[name].add(np.asarray(logits[name], np.float64) / temperatures[name], labels)
            if has_table1:
                agreements[name].add(labels, top[fusion.TEXT_ONLY][:, 0], top[fusion.IMAGE_ONLY][:, 0],
                                     top[name][:, 0])
    results = {}
    for name in models:
        coverage, threshold = calibrated[name].coverage_at(calibration.DEFAULT_TARGET_PRECISION)
        results[name] = {**counts[name].metrics(), "ece": calibrated[name].ece(), "coverage_at_98": coverage,
                         "threshold_at_98": threshold, "temperature": temperatures[name]}
        if name in routing:
            results[name]["routing"] = routing[name].figures()
    if has_table1:
        results["table1"] = {name: agreements[name].table() for name in models}
    return results


def _training_figures(t: Trained) -> dict:
    return {"seconds": t.logs.get("seconds", 0.0) + t.logs.get("head_phase", {}).get("seconds", 0.0),
            "epochs": t.logs.get("epochs"), "validation_top1_accuracy": _validation_of(t)}


def run_tune(bench: Benchmark, config: AblationConfig, frozen_models: dict | None = None,
             frozen_choices: dict | None = None) -> tuple[dict, dict]:
    """Every model × seed of one tune. Returns (raw results, {seed: {model: Trained}})."""
    log, tune = bench.log, bench.tune
    chosen, decision_choice, selection, all_models, runs = {}, {}, {}, {}, []
    head_rates = dict(frozen_choices or {})
    for seed in config.seeds:
        trained: dict[str, Trained] = {}
        started = time.monotonic()
        for model in config.training_order():
            rates = config.learning_rates_of(tune, model)
            frozen = (frozen_models or {}).get(seed)
            kinds = [CROSSFIT]
            if model in fusion.DECISION_FUSIONS and tune == FROZEN and seed == config.seeds[0]:
                kinds = [CROSSFIT, IN_SAMPLE]  # in-sample is kept only if it wins on validation
            elif model in fusion.DECISION_FUSIONS:
                kinds = [decision_choice.get(model, CROSSFIT)]
            if model in chosen:
                candidates = [(chosen[model], kinds[0])]
            else:
                candidates = [(rate, kind) for rate in rates for kind in kinds]
            fitted = {}
            for rate, kind in candidates:
                unimodal_rates = {m: chosen[m] for m in fusion.UNIMODAL_FUSIONS if m in chosen}
                fitted[(rate, kind)] = bench.fit(model, seed, rate, trained, frozen, head_rates or chosen, kind,
                                                 unimodal_rates)
            (rate, kind), best = max(fitted.items(), key=lambda kv: (_validation_of(kv[1]), kv[0][1] == CROSSFIT,
                                                                      -kv[0][0]))
            if model not in chosen:
                selection[model] = [{"learning_rate": r, "decision_training": k, "validation_top1_accuracy":
                                     _validation_of(f)} for (r, k), f in fitted.items()]
                chosen[model] = rate
                if model in fusion.DECISION_FUSIONS:
                    decision_choice[model] = kind
                log(f"[{tune} select] {model}: validation top-1 " + ", ".join(
                    f"{r:g}/{k} → {_validation_of(f):.4f}" if model in fusion.DECISION_FUSIONS else
                    f"{r:g} → {_validation_of(f):.4f}" for (r, k), f in fitted.items()) + f"; chose {rate:g}")
            trained[model] = best
            log(f"[{tune} seed {seed}] {model}: validation top-1 {_validation_of(best):.4f}, "
                f"{_training_figures(best)['seconds']:.0f} s")
        training_seconds = time.monotonic() - started
        started = time.monotonic()
        figures = evaluate_models(bench.run(), {m: trained[m] for m in config.training_order()})
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
        table = [run["eval"]["table1"][fusion.TEXT_ONLY] for run in runs]
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
    if raw.get("baseline"):
        baseline = raw["baseline"][baselines.TFIDF_SVM]
        row = {metric: _mean_std([baseline[features.EVAL_SPLIT][metric]])
               for metric in ("top1_accuracy", "top5_accuracy", "macro_f1")}
        row["validation_top1_accuracy"] = _mean_std([baseline[features.VALIDATION_SPLIT]["top1_accuracy"]])
        row["train_seconds"] = _mean_std([baseline["seconds"]])
        summary["baseline"] = {baselines.TFIDF_SVM: row}
        summary["models"][baselines.TFIDF_SVM] = row
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
        gain = figures[name]["top1_accuracy"] - figures[fusion.TEXT_ONLY]["top1_accuracy"]
        net.append(100.0 * gain / headroom)
    if not recovered:
        return None
    return {"recovered_percent": _mean_std(recovered), "net_gain_percent_of_headroom": _mean_std(net)}


def run_ablation(out: str, examples_dir: str, transform_graph_dir: str, model_config: ModelConfig,
                 config: AblationConfig, log=print) -> dict:
    """The feature cache once, the baseline, then every tune; returns {"cache", "baseline", tune: raw,
    "seconds": per phase}."""
    seconds = {}
    started = time.monotonic()
    cache_dir = os.path.join(out, "feature_cache")
    metadata = features_cache.cache_features(
        examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, cache_dir=cache_dir,
        model_config=model_config, top=TOP in config.tunes, validation_fraction=config.validation_fraction)
    seconds["feature cache"] = time.monotonic() - started
    results = {"cache": metadata}
    frozen_models, frozen_choices, frozen_folds = None, None, None
    for tune in config.tunes:
        bench = Benchmark(out, examples_dir, transform_graph_dir, cache_dir, model_config, config, tune, log,
                          frozen_folds)
        if config.baseline and "baseline" not in results:
            started = time.monotonic()
            results["baseline"] = {baselines.TFIDF_SVM: run_baseline(bench.run(), bench.run().classes)}
            seconds["tfidf_svm"] = time.monotonic() - started
            log(f"[baseline] tfidf_svm: eval top-1 {results['baseline'][baselines.TFIDF_SVM]['eval']['top1_accuracy']:.4f}")
        started = time.monotonic()
        raw, models = run_tune(bench, config, frozen_models, frozen_choices)
        seconds[f"{tune} models"] = time.monotonic() - started
        results[tune] = raw
        if tune == FROZEN:
            frozen_models, frozen_choices, frozen_folds = models, raw["learning_rates"], bench.folds
    results["seconds"] = seconds
    return results


def write_json(path: str, payload: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
