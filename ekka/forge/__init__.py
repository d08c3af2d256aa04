"""GitHub, for every part that talks to it: `client` (the one client, on PyGithub, and
`connect`, which builds it from `GitHubSettings`), `comments` (Ekka's comments found by their
marker, edited or posted; the addresses they link to) and `pulls` (a commit's pull request, for
the bisection's history). Nothing is imported here, so that the PR lookup loads PyGithub only
when it makes a call."""
