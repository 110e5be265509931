"""model.config: ModelConfig holds the typed encoder description (no loose copies of its fields; config.json
still shows the old keys, derived from it), and a config.json written before it (encoder, encoder_weights,
image_size, preprocessing at the top, no description) still loads."""
import json

from captionbeam.model.config import ModelConfig
from captionbeam.model.encoder_description import EncoderDescription

# the config.json `captionbeam train` wrote before the description (a merge model on mobilenet 32 px)
OLD_CONFIG = {"arch": "merge", "vocab_size": 9, "max_length": 8, "feature_shape": [256], "embedding_dim": 16,
              "units": 16, "num_layers": 1, "dropout": 0.0, "attention_units": 256, "attention_lambda": 1.0,
              "heads": 4, "ffn_units": 0, "positions": "learned", "encoder": "mobilenet", "encoder_weights": "none",
              "image_size": [32, 32], "preprocessing": "keras.applications.mobilenet.preprocess_input (mode tf)", "vocab_sha256": "ab"}


def test_an_old_config_json_loads_into_the_description():
    config = ModelConfig.from_json(json.dumps(OLD_CONFIG))
    d = config.encoder_description
    assert (d.name, d.weights, d.image_size, d.preprocessing, d.preprocessing_mode, d.feature_shape) == (
        "mobilenet", "none", 32, "keras.applications.mobilenet.preprocess_input (mode tf)", "tf", (256,))
    assert config.encoder == "mobilenet" and config.image_size == [32, 32] and config.units == 16
    saved = json.loads(config.to_json())     # written again: the description, the old keys derived from it
    assert saved["encoder_description"]["name"] == "mobilenet"
    assert {k: saved[k] for k in ("encoder", "encoder_weights", "image_size", "preprocessing")} == {
        k: OLD_CONFIG[k] for k in ("encoder", "encoder_weights", "image_size", "preprocessing")}
    assert ModelConfig.from_json(config.to_json()) == config


def test_a_config_without_an_encoder_round_trips():
    config = ModelConfig(arch="inject", vocab_size=12, feature_shape=[8], units=8)
    again = ModelConfig.from_json(config.to_json())
    assert again == config and again.encoder_description is None and again.encoder == "" and again.image_size == []
    described = ModelConfig(feature_shape=[8], encoder_description=EncoderDescription(
        name="mobilenet", weights="none", image_size=32, preprocessing_mode="tf", feature_shape=(8,)))
    assert ModelConfig.from_json(described.to_json()) == described
