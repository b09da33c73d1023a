# em_keras: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= runs/unet_cpu
DATA   ?= $(or $(EM_KERAS_DATA),../shared/data/isbi2012)

.PHONY: install demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e ".[cpu,crf,test]"

# Train the CPU preset, predict the held-out slices, evaluate and export (all in --out),
# then run the standalone predict/evaluate commands on the exported model.
demo: install
	$(PY) train_unet.py --preset cpu --data $(DATA) --out $(OUT) --overwrite
	$(PY) -m em_keras predict --model $(OUT)/saved_model --images $(DATA)/train-volume.tif --slices 20-24 --out $(OUT)/probs_savedmodel.npy
	$(PY) -m em_keras evaluate --probs $(OUT)/probs_savedmodel.npy --labels $(DATA)/train-labels.tif --slices 20-24 --json $(OUT)/evaluate.json

test: install
	$(PY) -m pytest tests -q

clean:
	rm -rf runs .pytest_cache
