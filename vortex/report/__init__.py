"""Plots and text tables of profiles, attacks and controller runs."""
