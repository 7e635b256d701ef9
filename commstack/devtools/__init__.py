"""Developer tools that need no deployment: the offline engine, render, render-diff, bench and localnames."""
