# em_keras: the README's two commands are `make demo` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
OUT      ?= runs/unet_cpu
DATA_DIR ?= $(or $(EM_KERAS_DATA),../shared/data/isbi2012)
# Real ISBI data when present, else a synthetic stack written by `python -m em_keras synth`.
DATA     := $(if $(wildcard $(DATA_DIR)/train-volume.tif),$(DATA_DIR),runs/synthetic)
HELD_OUT := -5:

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e ".[cpu,crf,test]"

runs/synthetic/train-volume.tif: | $(PY)
	@echo "no ISBI data in $(DATA_DIR): using a synthetic EM-like stack"
	$(PY) -m em_keras synth --out runs/synthetic

# Train the CPU preset (held-out = last 5 slices), then predict those slices with the exported
# SavedModel (with TTA; the label offset measured on the training slices travels with the export,
# so the result matches metrics.json) and evaluate them with the standalone commands.
demo: install $(DATA)/train-volume.tif
	$(PY) train_unet.py --preset cpu --data $(DATA) --val-slices=$(HELD_OUT) --out $(OUT) --overwrite
	$(PY) -m em_keras predict --model $(OUT)/saved_model --images $(DATA)/train-volume.tif \
		--slices=$(HELD_OUT) --tta --out $(OUT)/probs_savedmodel.npy
	$(PY) -m em_keras evaluate --probs $(OUT)/probs_savedmodel.npy --labels $(DATA)/train-labels.tif \
		--slices=$(HELD_OUT) --json $(OUT)/evaluate.json

test: install
	$(PY) -m pytest tests -q

clean:
	rm -rf runs .pytest_cache
