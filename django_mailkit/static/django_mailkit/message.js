// The outbox message page: tabs for the message's views, and an HTML
// preview as tall as its content. Without this script every view shows,
// one after the other, and the preview keeps a fixed height.
'use strict';
{
    const tablist = document.querySelector('.mailkit-tabs');
    if (tablist) {
        const tabs = Array.from(tablist.querySelectorAll('[role="tab"]'));
        const select = (tab, focus) => {
            for (const other of tabs) {
                const selected = other === tab;
                other.setAttribute('aria-selected', String(selected));
                other.tabIndex = selected ? 0 : -1;
                const panel = document.getElementById(other.getAttribute('aria-controls'));
                if (panel) {
                    panel.hidden = !selected;
                }
            }
            if (focus) {
                tab.focus();
            }
            sizePreview();
        };
        tablist.addEventListener('click', (event) => {
            const tab = event.target.closest('[role="tab"]');
            if (tab) {
                select(tab, false);
            }
        });
        tablist.addEventListener('keydown', (event) => {
            const index = tabs.indexOf(document.activeElement);
            const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
            if (index >= 0 && step) {
                event.preventDefault();
                select(tabs[(index + step + tabs.length) % tabs.length], true);
            }
        });
        tablist.hidden = false;
        select(tabs.find((tab) => tab.getAttribute('aria-selected') === 'true') || tabs[0], false);
    }

    // The preview is same-origin but script-less (sandbox without
    // allow-scripts, and a CSP without script-src): the page reads its height.
    function sizePreview() {
        const frame = document.querySelector('iframe.mailkit-preview');
        if (!frame || frame.offsetParent === null) {
            return;
        }
        try {
            const doc = frame.contentDocument;
            if (doc && doc.documentElement) {
                // The document is at least as tall as its frame: measure it
                // in a frame of no height, then give it that height.
                const scrollY = window.scrollY;
                frame.style.height = '0px';
                const height = doc.documentElement.scrollHeight;
                frame.style.height = Math.min(Math.max(height, 80), 20000) + 'px';
                window.scrollTo(window.scrollX, scrollY);
            }
        } catch (error) {
            // Opaque origin (an older page, or a browser without support): keep the CSS height.
        }
    }
    const frame = document.querySelector('iframe.mailkit-preview');
    if (frame) {
        frame.addEventListener('load', () => {
            sizePreview();
            // Images without sizes change the height as they arrive.
            const images = frame.contentDocument ? frame.contentDocument.images : [];
            for (const image of images) {
                image.addEventListener('load', sizePreview);
            }
        });
        window.addEventListener('resize', sizePreview);
        sizePreview();
    }
}
