"""hvpose: G-RMI top-down human pose estimation (heatmaps + offsets + Hough voting) in JAX/Flax."""


def __getattr__(name: str):
    # `hvpose.Predictor` without importing JAX and the models on `import hvpose`.
    if name in ("Predictor", "Person"):
        from hvpose import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'hvpose' has no attribute {name!r}")


__all__ = ["Person", "Predictor"]
