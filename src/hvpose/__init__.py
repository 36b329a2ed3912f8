"""hvpose: G-RMI top-down human pose estimation (heatmaps + offsets + Hough voting) in JAX/Flax."""


def __getattr__(name: str):
    # `hvpose.Predictor` without importing JAX and the models on `import hvpose`.
    if name == "Predictor":
        from hvpose import predict

        return predict.Predictor
    if name == "PredictedPerson":
        from hvpose import inference

        return inference.PredictedPerson
    raise AttributeError(f"module 'hvpose' has no attribute {name!r}")


__all__ = ["PredictedPerson", "Predictor"]
