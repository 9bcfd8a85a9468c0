"""TzK models: flows, Gaussian densities, knowledge networks (one at a time and stacked), a stage's terms and the stage itself. Imports only tzkgraph.core."""
