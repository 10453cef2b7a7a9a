"""The main job's machinery: one seed's world, trainings and evaluations, the metrics read from them, and the statistics over items, classes and seeds."""
