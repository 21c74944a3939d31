"""Children's drawings made up for tests: the demo's generator (houses, suns and stick figures
whose detail grows with the child's age, and the unusual ones: scribbles, solid fills, noise,
a drawing far below the age's level), so tests and the demo draw the same pictures."""

from oddity.cli.demo_drawings import drawing, noise, scribble, solid_fill, unusual

__all__ = ["drawing", "noise", "scribble", "solid_fill", "unusual"]
