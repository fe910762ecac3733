"""Memory planning and weight placement: what lives where on the device, and what moves when.

- ``workload`` / ``plan_inputs``: what the planner measures (weight bytes, streamable units, activation
  peaks) from presets, checkpoint folders or a loaded cascade
- ``meta_trace`` / ``step_trace``: activation peaks of the exact steps, measured on the meta device
- ``planner`` / ``plan_report``: residency, offload, streaming, T5 release, VAE tiling; the printed table
- ``weight_precision``: which U-Nets run weight-only int8 under a budget
- ``offload`` / ``weight_layout`` / ``partition``: putting weights where a plan says, and moving them in
- ``sizes``: memory sizes as users write them ("8GiB") and as plans print them
"""
