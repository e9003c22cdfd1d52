"""The model: the UNet, the diffusion process, respacing, sampling and MAC counting."""
