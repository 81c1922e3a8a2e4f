"""The inspectors' web page: server-rendered Jinja2 pages on the API's own queries and scope."""
