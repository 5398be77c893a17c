# Two commands set everything up on a fresh machine:
#   make study STUDY=hinton_mnist PROFILE=quick     (runs a study)
#   make test                                        (runs the tests)
# Both create .venv when it is missing and install the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STUDY ?= hinton_mnist
PROFILE ?= quick
ARGS ?=

.PHONY: venv test study large figures bench scorecard docs clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test,notebooks,ray]' $(TORCH_PINS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

study: $(STAMP)
	$(PY) -m studies.$(STUDY) --profile $(PROFILE) $(ARGS)

# The large profiles (issue 28) that fit its budget, seed by seed, so that every seed's
# capacity-gap and early-stopping cells land before the next seed's teachers train. About 30
# hours (studies.zoo_budget): every command resumes (finished rows, cached models, training
# snapshots); python -m studies.zoo_progress says how far it has got and how long it has left
# (--record writes it to results/zoo_progress/ for the README; --carry copies the finished models
# and the trainings left part-way into results/models, to commit: a machine that lost the model
# cache goes on from them).
# Each seed trains all its models in one precision (part of every key), so that no comparison
# within a seed mixes precisions: seed 0 in bf16 (begun on an AMD EPYC with AVX512_BF16), seed 1
# in fp32 (begun on an AMD EPYC without AVX512, where bf16 is emulated, about 17x slower than
# fp32), seed 2 in bf16. A machine without native bf16 runs LARGE_SEEDS=1 alone.
LARGE_SEEDS ?= 0 1 2
LARGE_PRECISION_0 = bf16
LARGE_PRECISION_1 = fp32
LARGE_PRECISION_2 = bf16
# The method zoo's large profile (priority 2, method_zoo.large_sizing) is over the
# budget and not run by this target: python -m studies.method_zoo --profile large.
large: $(STAMP)
	$(foreach seed,$(LARGE_SEEDS),for study in capacity_gap early_stopping; do \
		$(PY) -m studies.$$study --profile large --seeds $(seed):$$(($(seed) + 1)) \
			--precision $(LARGE_PRECISION_$(seed)) $(ARGS) || exit 1; done;)

# Executes every notebook headless, in place; each one rewrites its figures/ files.
figures: $(STAMP)
	for nb in notebooks/*.ipynb; do \
		$(PY) -m jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; \
	done

bench: $(STAMP)
	$(PY) -m kd.experiment.bench $(ARGS)

# One verdict per claim (studies/claims.csv) and profile: results/scorecard.csv,
# figures/scorecard_matrix.png and figures/scorecard_<study>.png.
scorecard: $(STAMP)
	$(PY) -m studies.scorecard $(ARGS)

# The study pages docs/<study>.md and README.md's verdict table, from the CSVs (studies/docs.py).
docs: $(STAMP)
	$(PY) -m studies.docs $(ARGS)

clean-venv:
	rm -rf $(VENV)
