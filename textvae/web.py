"""A local web page to play with a run: `python generate.py serve [--run DIR] [--port N]`.

Built with Gradio (the usual toolkit for ML demos; an optional extra, `pip install
'.[web]'`). Five tabs, each a thin wrapper over the Python API: write poems, walk the
path between two lines with a slider, complete a line, find a line's nearest training
lines, draw the latent map. Every handler turns a bad input into one readable message
on the page (gr.Error); the server logs anything unexpected and keeps serving.
"""
import functools
import os
import sys
import traceback

from .errors import UserError

WRITE_FORMS = ("lines", "wujue", "qijue", "wulv", "qilv")


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        raise UserError("generate.py serve needs Gradio: pip install 'textvae[web]' "
                        "(or pip install gradio)") from None
    return gr


def readable(handler):
    """A handler whose failures reach the page as one line, never a stack trace."""
    @functools.wraps(handler)
    def wrapped(*args):
        gr = _gradio()
        try:
            return handler(*args)
        except UserError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the page must keep working
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"internal error ({type(e).__name__}: {e}); the server "
                           "keeps running") from None
    return wrapped


def build(run):
    """The page's gr.Blocks for a loaded run."""
    gr = _gradio()
    with gr.Blocks(title=f"textvae: {run.dir.name}") as page:
        gr.Markdown(f"## textvae · {run.dir.name}\nA sequence VAE of "
                    f"{run.config['data'].get('corpus', run.dir.name)} lines: "
                    "z ~ N(0, I) is decoded into a line.")
        with gr.Tab("Write"):
            _write_tab(gr, run)
        with gr.Tab("Interpolate"):
            _interpolate_tab(gr, run)
        with gr.Tab("Complete"):
            _complete_tab(gr, run)
        with gr.Tab("Similar"):
            _similar_tab(gr, run)
        with gr.Tab("Map"):
            _map_tab(gr, run)
    return page


def _write_tab(gr, run):
    from .decoding import TEMPERATURE, SampleConfig, for_run
    with gr.Row():
        # Free lines first: an acrostic, keywords or a theme then need no form.
        form = gr.Dropdown(WRITE_FORMS, value="lines", label="form (lines: free lines; "
                           "wujue with tones: generate.py's default)")
        rhyme = gr.Dropdown(["pingshui", "xinyun", "off"], value="pingshui", label="rhyme")
        tones = gr.Checkbox(label="tones (平仄)")
        num = gr.Number(value=2, precision=0, minimum=1, maximum=50, label="poems")
        seed = gr.Number(value=0, precision=0, label="seed")
    with gr.Row():
        acrostic = gr.Textbox(label="acrostic (first characters)", max_lines=1)
        keywords = gr.Textbox(label="keywords (月,秋)", max_lines=1)
        theme = gr.Textbox(label="theme (a line)", max_lines=1)
        opening = gr.Textbox(label="first line(s) to continue (白日依山尽)", max_lines=1)
        top_k = gr.Number(value=0, precision=0, minimum=0, label="top-k (0: all)")
        usual = for_run(run, SampleConfig()).temperature
        temperature = gr.Slider(0.0, 2.0, value=usual, step=0.05,
                                label=f"temperature (0: greedy; left at {usual}: the "
                                      f"defaults, {TEMPERATURE['poem']} for the poem "
                                      "model's poems and forms)")
    go = gr.Button("Write", variant="primary", elem_id="write-btn")
    out = gr.Textbox(label="poems", lines=12, elem_id="poems")

    @readable
    def write(form, rhyme, tones, num, seed, acrostic, keywords, theme, top_k, temperature,
              opening):
        # Left where it starts, the slider asks for generate.py's defaults.
        temperature = None if float(temperature) == usual else float(temperature)
        kw = dict(seed=int(seed or 0), top_k=int(top_k or 0), temperature=temperature,
                  keywords=keywords.strip(), theme=theme.strip())
        if opening.strip():
            from .poem import clauses
            poems = run.continue_poem(clauses(opening), _count(num), **kw)
        elif form == "lines":
            poems = run.poems(_count(num), acrostic=acrostic.strip(), **kw)
        else:
            from .poetry import couplets
            poems = [couplets(p) for p in run.poems(_count(num), form=form, rhyme=rhyme,
                                                    tones=tones, acrostic=acrostic.strip(),
                                                    **kw)]
        return "\n\n".join("\n".join(p) for p in poems)
    go.click(write, [form, rhyme, tones, num, seed, acrostic, keywords, theme, top_k,
                     temperature, opening], out)


def _count(num, most=50):
    if num is None or not 1 <= int(num) <= most:
        raise UserError(f"poems: give a number from 1 to {most}")
    return int(num)


def _interpolate_tab(gr, run):
    with gr.Row():
        a = gr.Textbox(label="from", value="白日依山尽" if run.max_len == 5 else "",
                       max_lines=1, elem_id="line-a")
        b = gr.Textbox(label="to", value="床前明月光" if run.max_len == 5 else "",
                       max_lines=1, elem_id="line-b")
        steps = gr.Slider(2, 16, value=8, step=1, label="steps")
        how = gr.Radio(["linear", "spherical"], value="linear", label="path")
    go = gr.Button("Interpolate", variant="primary", elem_id="interp-btn")
    path_state = gr.State([])
    with gr.Row():
        path = gr.Textbox(label="path", lines=8, elem_id="path")
        with gr.Column():
            where = gr.Slider(0, 1, value=0, step=1, label="walk the path", elem_id="walk",
                              interactive=True)
            here = gr.Textbox(label="line at this point", elem_id="here")

    @readable
    def interpolate(a, b, steps, how):
        lines = run.interpolate(a.strip(), b.strip(), int(steps), how)
        text = "\n".join(f"{i}  {line}" for i, line in enumerate(lines))
        return (lines, text, gr.Slider(0, len(lines) - 1, value=0, step=1, interactive=True),
                lines[0])
    go.click(interpolate, [a, b, steps, how], [path_state, path, where, here])
    where.change(lambda lines, i: lines[int(i)] if lines else "", [path_state, where], here)


def _complete_tab(gr, run):
    with gr.Row():
        pattern = gr.Textbox(label="a line with blanks (_)", max_lines=1, elem_id="pattern",
                             value="白日__尽" if run.max_len == 5 else "")
        seed = gr.Number(value=0, precision=0, label="seed")
        num = gr.Number(value=4, precision=0, minimum=1, maximum=20, label="completions")
    go = gr.Button("Complete", variant="primary", elem_id="complete-btn")
    out = gr.Textbox(label="completions", lines=6, elem_id="completions")

    @readable
    def complete(pattern, seed, num):
        if not pattern.strip():
            raise UserError("type a line with _ where characters should go, e.g. 白日__尽")
        n = _count(num, 20)
        return "\n".join(run.complete([pattern.strip()] * n, seed=int(seed or 0)))
    go.click(complete, [pattern, seed, num], out)


def _similar_tab(gr, run):
    line = gr.Textbox(label="a line", max_lines=1, elem_id="query",
                      value="白日依山尽" if run.max_len == 5 else "")
    go = gr.Button("Encode and find neighbours", variant="primary", elem_id="similar-btn")
    out = gr.Textbox(label="reconstruction and nearest training lines (latent distance)",
                     lines=12, elem_id="similar")

    @readable
    def similar(line):
        from .latent import similar as nearest
        if not line.strip():
            raise UserError("type a line")
        back = run.reconstruct([line.strip()])[0]
        near = nearest(run, [line.strip()], 10)[0]
        return f"reconstructed: {back}\n\n" + "\n".join(f"{d:6.2f}  {s}" for s, d in near)
    go.click(similar, [line], out)


def _map_tab(gr, run):
    with gr.Row():
        colour = gr.Dropdown(["season", "tone"], value="season", label="colour by")
        num = gr.Number(value=2000, precision=0, minimum=2, maximum=20000, label="lines")
    go = gr.Button("Draw the map", variant="primary", elem_id="map-btn")
    image = gr.Image(label="latent map (PCA of posterior means)", type="pil", elem_id="map")

    @readable
    def draw(colour, num):
        import io
        from PIL import Image
        from .latent import map_png
        return Image.open(io.BytesIO(map_png(run, int(num or 2000), colour)))
    go.click(draw, [colour, num], image)


def serve(run, port=7860):
    """Serve the page on 127.0.0.1 until interrupted."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be 1 to 65535, got {port}")
    page, gr = build(run), _gradio()
    # System fonts: the default theme fetches web fonts, and this page may be offline.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    print(f"textvae: serving {run.dir} on http://127.0.0.1:{port} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        page.queue().launch(server_name="127.0.0.1", server_port=port, share=False,
                            show_error=False, quiet=True, theme=theme)
    except OSError as e:
        raise UserError(f"cannot serve on port {port}: {e}") from None
    return 0
