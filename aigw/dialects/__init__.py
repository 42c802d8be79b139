"""Request dialects: how a request in one API's shape reaches a target that speaks another.

`chat` (OpenAI Chat Completions) is the canonical form; `responses` (OpenAI Responses) and
`messages` (Anthropic Messages) translate to and from it. Each module is pure: dicts and bytes in
and out, no I/O; the proxy decides per target whether a request goes natively or translated.
"""
