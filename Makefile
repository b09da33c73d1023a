# em_keras: the README's two commands are `make demo` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
EM       := $(VENV)/bin/em-keras
OUT      ?= runs/demo
DATA_DIR ?= $(or $(EM_KERAS_DATA),../shared/data/isbi2012)
# Real ISBI data when present, else a synthetic stack written by `em-keras synth`.
DATA     := $(if $(wildcard $(DATA_DIR)/train-volume.tif),$(DATA_DIR),runs/synthetic)
HELD_OUT := -5:
DEMO_FLAGS ?= --preset cpu --epochs 5

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e ".[cpu,crf,volume,bioimageio,test]"

runs/synthetic/train-volume.tif: | $(PY)
	@echo "no ISBI data in $(DATA_DIR): using a synthetic EM-like stack"
	$(EM) synth --out runs/synthetic

# Train (held-out = last 5 slices; the run predicts them with TTA and tunes the segmentation on
# the training slices), then predict the held-out slices again with the exported SavedModel and
# segment them into cells with the run's tuned parameters, and score both, with the standalone commands.
demo: install $(DATA)/train-volume.tif
	$(EM) train unet $(DEMO_FLAGS) --data $(DATA) --val-slices=$(HELD_OUT) --out $(OUT) --overwrite
	$(EM) predict --model $(OUT)/saved_model --images $(DATA)/train-volume.tif --slices=$(HELD_OUT) \
		--tta --out $(OUT)/probs_savedmodel.npy --segment $(OUT)/cells.tif
	$(EM) evaluate --probs $(OUT)/probs_savedmodel.npy --seg $(OUT)/cells.tif \
		--labels $(DATA)/train-labels.tif --slices=$(HELD_OUT) --json $(OUT)/evaluate.json

test: install
	$(PY) -m pytest tests em_keras --doctest-modules -q -p no:cacheprovider
	$(PY) -m pytest experiments -q -p no:cacheprovider

clean:
	rm -rf runs .pytest_cache
