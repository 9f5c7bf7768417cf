"""analysis: representation analyses (neural codes, neuron alignment, LinearScope, interaction basis)."""
